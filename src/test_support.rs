//! The one test support layer of tests/common, for the crate's unit tests:
//! the seeded generator and the f64 oracle the integration tests use
//! (tests/common/random.rs, tests/common/oracle.rs), included here rather than
//! copied, so that every test of the crate draws from one generator and
//! compares with one oracle.

#[path = "../tests/common/oracle.rs"]
pub(crate) mod oracle;
#[path = "../tests/common/random.rs"]
pub(crate) mod random;
