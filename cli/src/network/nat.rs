//! Outbound traffic from the bridge: a table of husk's own (`ip husk`)
//! that masquerades the bridge's subnet on its way out and lets the
//! bridge's traffic through the forward hook, applied with the `nftables`
//! crate (nft's JSON API). Made with the bridge's first run, deleted with
//! its last; no other table is touched.
//!
//! Another table's forward chain with a drop policy (Docker sets
//! iptables' FORWARD to DROP) still drops what it does not accept: a
//! verdict of ours cannot overrule it, and we do not write into tables
//! that are not ours (the README says so).

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::bridge::{BRIDGE, GATEWAY, PREFIX};

const TABLE: &str = "husk";

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Borrowed(TABLE),
        handle: None,
    })
}

/// A batch that starts with no table: add then delete works in one
/// transaction whether the table was there or not.
fn without_table() -> Batch<'static> {
    let mut batch = Batch::new();
    batch.add(table());
    batch.delete(table());
    batch
}

/// The table, made anew (in one transaction: no moment without it).
pub fn install() -> Result<(), String> {
    let mut batch = without_table();
    batch.add(table());
    for (name, kind, hook, prio) in [
        ("postrouting", NfChainType::NAT, NfHook::Postrouting, 100),
        ("forward", NfChainType::Filter, NfHook::Forward, 0),
    ] {
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(name),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }
    for (chain, expr) in rules() {
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Borrowed(TABLE),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            ..Rule::default()
        }));
    }
    nftables::helper::apply_ruleset(&batch.to_nftables())
        .map_err(|e| format!("nftables: making table ip {TABLE}: {e}"))?;
    forwarding_on()
}

/// Deletes the table (when the last run leaves the bridge), and turns
/// IPv4 forwarding back off if it was off before husk turned it on.
pub fn remove() -> Result<(), String> {
    nftables::helper::apply_ruleset(&without_table().to_nftables())
        .map_err(|e| format!("nftables: deleting table ip {TABLE}: {e}"))?;
    let marker = forwarding_marker();
    if marker.exists() {
        std::fs::write(IP_FORWARD, "0")
            .map_err(|e| format!("turning IPv4 forwarding back off: {e}"))?;
        let _ = std::fs::remove_file(marker);
    }
    Ok(())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Says that forwarding was off before husk turned it on, so the last run
/// leaves the host as it found it (Docker leaves it on).
fn forwarding_marker() -> std::path::PathBuf {
    std::path::Path::new(super::bridge::IPAM_DIR).join("ip_forward-was-off")
}

fn forwarding_on() -> Result<(), String> {
    let was = std::fs::read_to_string(IP_FORWARD).map_err(|e| format!("{IP_FORWARD}: {e}"))?;
    if was.trim() == "1" {
        return Ok(());
    }
    let marker = forwarding_marker();
    std::fs::write(&marker, "").map_err(|e| format!("{}: {e}", marker.display()))?;
    std::fs::write(IP_FORWARD, "1").map_err(|e| format!("turning on IPv4 forwarding: {e}"))
}

fn rules() -> Vec<(&'static str, Vec<Statement<'static>>)> {
    let subnet = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(
            std::net::Ipv4Addr::from(u32::from(GATEWAY) & !0xff).to_string(),
        ))),
        len: u32::from(PREFIX),
    }));
    let saddr = Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed("saddr"),
        },
    )));
    let iface = |key| Expression::Named(NamedExpression::Meta(Meta { key }));
    let bridge = || Expression::String(Cow::Borrowed(BRIDGE));
    let is = |left, op, right| Statement::Match(Match { left, right, op });
    let state = Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("state"),
        family: None,
        dir: None,
    }));
    let replies = Expression::List(vec![
        Expression::String(Cow::Borrowed("established")),
        Expression::String(Cow::Borrowed("related")),
    ]);
    vec![
        (
            "postrouting",
            vec![
                is(saddr, Operator::EQ, subnet),
                is(iface(MetaKey::Oifname), Operator::NEQ, bridge()),
                Statement::Masquerade(None),
            ],
        ),
        (
            "forward",
            vec![
                is(iface(MetaKey::Iifname), Operator::EQ, bridge()),
                Statement::Accept(None),
            ],
        ),
        (
            "forward",
            vec![
                is(iface(MetaKey::Oifname), Operator::EQ, bridge()),
                is(state, Operator::IN, replies),
                Statement::Accept(None),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_are_nfts_json() {
        let json = serde_json::to_string(&rules()).unwrap();
        for needle in [
            r#"{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.90.0.0","len":24}},"op":"=="}}"#,
            r#"{"match":{"left":{"meta":{"key":"oifname"}},"right":"huskbr0","op":"!="}}"#,
            r#"{"masquerade":null}"#,
            r#"{"match":{"left":{"meta":{"key":"iifname"}},"right":"huskbr0","op":"=="}},{"accept":null}"#,
        ] {
            assert!(json.contains(needle), "{needle} in {json}");
        }
    }
}
