//! Property tests (bounded: a fixed number of cases per run, so CI time is bounded) for what arrives
//! off the wire: any bytes, and valid messages with bytes flipped or cut off. Decoding never panics;
//! what decodes re-encodes to itself; checking and versioning a decoded snapshot never panic.

use proptest::prelude::*;
use prost::Message;
use tether_proto::v1::{AgentMessage, Endpoint, HubMessage, Port, Service, Snapshot, hub_message};

fn sample() -> Vec<u8> {
    let snap = Snapshot {
        version: "0123456789abcdef".into(),
        nonce: "7".into(),
        namespace: "istio-system".into(),
        services: vec![Service {
            name: "istiod".into(),
            headless: false,
            ports: vec![Port {
                name: "grpc-xds".into(),
                protocol: "TCP".into(),
                port: 15010,
                app_protocol: "grpc".into(),
                target_port: 0,
            }],
            endpoints: (0..20)
                .map(|i| Endpoint {
                    ip: format!("10.0.0.{i}"),
                    ready: i % 2 == 0,
                    serving: true,
                    terminating: false,
                    pod_name: format!("istiod-{i}"),
                    zone: "z".into(),
                    target_ports: vec![15010],
                })
                .collect(),
            external_name: String::new(),
        }],
        injection: None,
        skip_legacy_endpoints: true,
    };
    HubMessage {
        message: Some(hub_message::Message::Snapshot(snap)),
    }
    .encode_to_vec()
}

fn inspect(msg: &HubMessage) {
    if let Some(hub_message::Message::Snapshot(s)) = &msg.message {
        let _ = tether_proto::check::snapshot(s);
        let _ = tether_proto::version::of(s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(msg) = HubMessage::decode(bytes.as_slice()) {
            inspect(&msg);
            let again = HubMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(again, msg);
        }
        if let Ok(msg) = AgentMessage::decode(bytes.as_slice()) {
            let again = AgentMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(again, msg);
        }
    }

    #[test]
    fn damaged_snapshots_decode_or_fail_cleanly(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = sample();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(msg) = HubMessage::decode(bytes.as_slice()) {
            inspect(&msg);
        }
    }
}
