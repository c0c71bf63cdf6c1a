//! TEMPORARY stub until the real probe module lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Tcp,
    Http,
    Https,
    Tls,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedCodes;
impl ExpectedCodes {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with('2') {
            Ok(ExpectedCodes)
        } else {
            Err(format!("bad {s:?}"))
        }
    }
}
