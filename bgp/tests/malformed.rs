//! Every case of the RFC 7606 corpus (`ferrule_bgp::testutil::malformed`) decodes to the
//! outcome the RFC assigns, and treat-as-withdraw really turns announcements into withdrawals.

use ferrule_bgp::testutil::malformed::{cases, ebgp4, update_bytes, Expected, AS_PATH4, NEXT_HOP, NLRI, ORIGIN};
use ferrule_bgp::wire::{attr_type, decode_message, Decision, FaultAction, Message, Prefix};

#[test]
fn every_corpus_case_gets_its_rfc7606_outcome() {
    let mut failures = Vec::new();
    for case in cases() {
        let got = match decode_message(&case.bytes, &case.opts) {
            Err(e) => Expected::SessionReset(e.notification.code, e.notification.subcode),
            Ok(Some((Message::Update(u), used))) => {
                assert_eq!(used, case.bytes.len(), "{}: consumed length", case.name);
                match u.decision() {
                    Decision::Accept => Expected::Accept,
                    Decision::TreatAsWithdraw => Expected::TreatAsWithdraw(
                        u.faults.iter().find(|f| f.action == FaultAction::TreatAsWithdraw).unwrap().type_code,
                    ),
                    Decision::AttributeDiscard => Expected::AttributeDiscard(u.faults[0].type_code),
                }
            }
            other => panic!("{}: unexpected {other:?}", case.name),
        };
        if got != case.expected {
            failures.push(format!("{}: expected {:?}, got {:?}", case.name, case.expected, got));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn decode_update(bytes: &[u8]) -> ferrule_bgp::wire::Update<'_> {
    match decode_message(bytes, &ebgp4()) {
        Ok(Some((Message::Update(u), _))) => u,
        other => panic!("not an update: {other:?}"),
    }
}

#[test]
fn treat_as_withdraw_moves_nlri_to_withdrawals() {
    let bytes = update_bytes(&[], &[&[0x40, 1, 1, 7], AS_PATH4, NEXT_HOP], NLRI);
    let u = decode_update(&bytes);
    assert_eq!(u.decision(), Decision::TreatAsWithdraw);
    assert_eq!(u.announced().count(), 0);
    let w: Vec<Prefix> = u.withdrawals().collect();
    assert_eq!(w, vec!["198.51.100.0/24".parse_prefix()]);
}

#[test]
fn attribute_discard_keeps_routes_and_drops_only_the_attribute() {
    let bytes = update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0x40, 6, 1, 0]], NLRI);
    let u = decode_update(&bytes);
    assert_eq!(u.decision(), Decision::AttributeDiscard);
    assert!(!u.attributes.atomic_aggregate);
    assert_eq!(u.announced().count(), 1);
    assert_eq!(u.withdrawals().count(), 0);
}

#[test]
fn duplicate_attribute_keeps_the_first_copy() {
    let bytes = update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0x40, 1, 1, 2]], NLRI);
    let u = decode_update(&bytes);
    assert_eq!(u.attributes.origin, Some(ferrule_bgp::wire::Origin::Igp));
}

#[test]
fn local_pref_from_ebgp_peer_is_ignored() {
    let bytes = update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0x40, 5, 4, 0, 0, 0, 200]], NLRI);
    assert_eq!(decode_update(&bytes).attributes.local_pref, None);
}

#[test]
fn unknown_optional_transitive_attribute_is_kept_with_partial_bit() {
    let bytes = update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0xc0, 99, 2, 1, 2], &[0x80, 98, 1, 9]], NLRI);
    let u = decode_update(&bytes);
    assert_eq!(u.attributes.unknown.len(), 1, "non-transitive unknown must be dropped");
    let raw = &u.attributes.unknown[0];
    assert_eq!((raw.type_code, raw.flags, raw.value.as_slice()), (99, 0xe0, &[1u8, 2][..]));
}

#[test]
fn unknown_well_known_attribute_notification_carries_the_attribute() {
    let bytes = update_bytes(&[], &[ORIGIN, AS_PATH4, NEXT_HOP, &[0x40, 99, 2, 1, 2]], NLRI);
    let err = decode_message(&bytes, &ebgp4()).unwrap_err();
    assert_eq!(err.notification.data, vec![0x40, 99, 2, 1, 2]);
}

#[test]
fn flags_error_on_mp_reach_still_withdraws_its_nlri() {
    let case = cases().into_iter().find(|c| c.name == "mp_reach with transitive flag").unwrap();
    let u = match decode_message(&case.bytes, &case.opts) {
        Ok(Some((Message::Update(u), _))) => u,
        other => panic!("{other:?}"),
    };
    assert_eq!(u.withdrawals().map(|p| p.to_string()).collect::<Vec<_>>(), vec!["2001:db8:1::/48"]);
    assert_eq!(u.faults[0].type_code, attr_type::MP_REACH_NLRI);
}

trait ParsePrefix {
    fn parse_prefix(&self) -> Prefix;
}

impl ParsePrefix for str {
    fn parse_prefix(&self) -> Prefix {
        let (a, l) = self.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }
}
