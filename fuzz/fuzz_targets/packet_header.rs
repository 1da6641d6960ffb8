//! Untrusted bytes as a forwarded data packet: reading the header never panics, a decoded
//! header re-encodes (with its payload) to the same bytes and decodes again to the same
//! header, and forwarding changes nothing but the hop limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::route::PacketHeader;

fuzz_target!(|packet: &[u8]| {
    if let Ok((header, payload)) = PacketHeader::decode(packet) {
        let encoded = header.encode(payload);
        assert_eq!(encoded, packet);
        assert_eq!(PacketHeader::decode(&encoded), Ok((header, payload)));
    }
    let mut forwarded = packet.to_vec();
    match PacketHeader::forward_in_place(&mut forwarded) {
        Ok(remaining) => {
            assert_eq!(Some(remaining), packet[1].checked_sub(1));
            assert_eq!(forwarded[1], remaining);
            assert_eq!(forwarded[0], packet[0]);
            assert_eq!(forwarded[2..], packet[2..]);
        }
        Err(_) => assert_eq!(forwarded, packet),
    }
});
