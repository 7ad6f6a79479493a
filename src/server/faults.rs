//! Fault injection for the tests, built only with the test-only `faults` feature (never in a
//! release): `HUBBUB_FAULTS` names faults and the message body that triggers each, e.g.
//! `writer-panic=BOOM,commit-error=LANDED,fanout-panic=FANOUT`. Without the feature, [`hit`] is
//! always false and the optimiser removes the checks.

/// Whether the fault `kind` is set for a message with this `body`.
#[cfg(feature = "faults")]
pub fn hit(kind: &str, body: &str) -> bool {
    use std::sync::OnceLock;
    static FAULTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var("HUBBUB_FAULTS")
                .unwrap_or_default()
                .split(',')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .collect()
        })
        .iter()
        .any(|(k, v)| k == kind && v == body)
}

/// The number set for the fault `kind` (`bus-drop=3`: every third), if any.
#[cfg(feature = "faults")]
pub fn number(kind: &str) -> Option<u64> {
    use std::sync::OnceLock;
    static FAULTS: OnceLock<String> = OnceLock::new();
    FAULTS
        .get_or_init(|| std::env::var("HUBBUB_FAULTS").unwrap_or_default())
        .split(',')
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim() == kind)
        .and_then(|(_, v)| v.trim().parse().ok())
}

#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn number(_kind: &str) -> Option<u64> {
    None
}

#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn hit(_kind: &str, _body: &str) -> bool {
    false
}
