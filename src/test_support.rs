//! The one test support layer of tests/common, for the crate's unit tests:
//! the seeded generator and the f64 oracle the integration tests use
//! (tests/common/random.rs, tests/common/oracle.rs), included here rather than
//! copied, so that every test of the crate draws from one generator and
//! compares with one oracle.

#[path = "../tests/common/oracle.rs"]
pub(crate) mod oracle;
#[path = "../tests/common/random.rs"]
pub(crate) mod random;

/// The fields of `struct NAME { .. }` in a WGSL source, as "name: type":
/// the layout tests compare the shaders' structs with each other and with
/// the host's.
pub(crate) fn wgsl_fields(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("struct {name} {{"))
        .unwrap_or_else(|| panic!("struct {name}"));
    let body = &src[start..];
    let body = &body[body.find('{').unwrap_or(0) + 1..body.find('}').unwrap_or(0)];
    body.lines()
        .map(|l| {
            l.split("//")
                .next()
                .unwrap_or("")
                .trim()
                .trim_end_matches(',')
        })
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}
