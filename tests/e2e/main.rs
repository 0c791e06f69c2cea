//! End-to-end tests: the whole marketplace over real HTTP against a real
//! Postgres, one fresh database per test.

mod abuse;
mod assets;
mod audit;
mod catalog;
mod commerce;
mod erasure;
mod errors;
mod flow;
mod http;
mod kurrentdb;
mod limits;
mod observability;
mod ops;
mod payments;
mod rebuild;
mod replicas;
mod shutdown;
mod subscriptions;
mod tracing;
