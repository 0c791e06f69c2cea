//! Use cases that span more than one aggregate, one file each.

pub mod find_account;
pub mod register;
