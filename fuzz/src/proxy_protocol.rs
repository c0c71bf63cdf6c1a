//! Target `proxy_protocol`: the PROXY protocol parser (v1 and v2) on the first bytes of a
//! connection. Beyond not panicking it must keep its contract with a caller that buffers
//! until it stops saying "need more": a header it accepts parses the same without what
//! follows it, every shorter prefix of it asks for more bytes instead of failing, and the
//! addresses it returns make a header (`encode`) that parses back to them.

use switchyard_node::proxy::proxy_protocol::{encode, parse, V1_MAX_LEN, V2_MAX_LEN};

/// Up to this many prefixes of an accepted header are checked (every one of a v1 header).
const PREFIXES: usize = 256;

pub fn run(data: &[u8]) {
    let Ok(Some((header, used))) = parse(data) else {
        return;
    };
    assert!(
        used > 0 && used <= data.len(),
        "consumed {used} of {}",
        data.len()
    );
    assert!(used <= V1_MAX_LEN.max(V2_MAX_LEN));
    match parse(&data[..used]) {
        Ok(Some((again, n))) => assert_eq!((again, n), (header.clone(), used)),
        other => panic!("the header alone parses otherwise: {other:?}"),
    }
    let step = used.div_ceil(PREFIXES).max(1);
    for cut in (0..used).step_by(step) {
        if let Ok(Some(_)) | Err(_) = parse(&data[..cut]) {
            panic!(
                "a {cut}-byte prefix of a {used}-byte header is not \"need more\": {:?}",
                parse(&data[..cut])
            );
        }
    }
    if let (Some(source), Some(destination)) = (header.source, header.destination) {
        let made = encode(header.version, source, destination);
        let (back, n) = parse(&made)
            .expect("an encoded header parses")
            .expect("an encoded header is whole");
        assert_eq!(n, made.len());
        let canonical =
            |a: Option<std::net::SocketAddr>| a.map(|a| (a.ip().to_canonical(), a.port()));
        assert_eq!(canonical(back.source), canonical(Some(source)));
        assert_eq!(canonical(back.destination), canonical(Some(destination)));
    }
}
