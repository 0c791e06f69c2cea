//! Use cases that span more than one aggregate, or that the API and the
//! tools share, one file each.

pub mod checkout;
pub mod deposit;
pub mod find_account;
pub mod place_order;
pub mod register;
