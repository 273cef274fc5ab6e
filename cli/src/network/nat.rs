//! A network's forwarding rules: a table of husk's own per network (`ip
//! huskbr<N>`, named as its bridge) that masquerades the subnet on its way
//! out, lets the bridge's traffic through the forward hook, and drops what
//! it would forward to another husk network. Applied with the `nftables`
//! crate (nft's JSON API); made with the network's first run, deleted with
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

use super::Network;

/// What matches every husk bridge (nft's wildcard).
const ANY_BRIDGE: &str = "huskbr*";

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Owned(name.to_owned()),
        handle: None,
    })
}

/// A batch that starts with no table: add then delete works in one
/// transaction whether the table was there or not.
fn without_table(name: &str) -> Batch<'static> {
    let mut batch = Batch::new();
    batch.add(table(name));
    batch.delete(table(name));
    batch
}

/// The network's table, made anew (in one transaction: no moment
/// without it), and IPv4 forwarding on.
pub fn install(network: &Network) -> Result<(), String> {
    let name = network.bridge();
    let mut batch = without_table(&name);
    batch.add(table(&name));
    for (chain, kind, hook, prio) in [
        ("postrouting", NfChainType::NAT, NfHook::Postrouting, 100),
        ("forward", NfChainType::Filter, NfHook::Forward, 0),
    ] {
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: Cow::Owned(name.clone()),
            name: Cow::Borrowed(chain),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }
    for (chain, expr) in rules(network) {
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Owned(name.clone()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            ..Rule::default()
        }));
    }
    nftables::helper::apply_ruleset(&batch.to_nftables())
        .map_err(|e| format!("nftables: making table ip {name}: {e}"))?;
    forwarding_on()
}

/// Deletes the network's table (when its last run leaves).
pub fn remove(network: &Network) -> Result<(), String> {
    let name = network.bridge();
    nftables::helper::apply_ruleset(&without_table(&name).to_nftables())
        .map_err(|e| format!("nftables: deleting table ip {name}: {e}"))
}

/// Turns IPv4 forwarding back off if it was off before husk turned it on
/// (when the last run on any network leaves).
pub fn restore_forwarding() -> Result<(), String> {
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
    std::path::Path::new(super::RUNTIME_DIR).join("ip_forward-was-off")
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

fn rules(network: &Network) -> Vec<(&'static str, Vec<Statement<'static>>)> {
    let subnet = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(network.subnet.to_string()))),
        len: u32::from(network.prefix),
    }));
    let saddr = Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed("saddr"),
        },
    )));
    let iface = |key| Expression::Named(NamedExpression::Meta(Meta { key }));
    let name = network.bridge();
    let bridge = || Expression::String(Cow::Owned(name.clone()));
    let any_bridge = Expression::String(Cow::Borrowed(ANY_BRIDGE));
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
        // Another husk network is another world: not through here.
        (
            "forward",
            vec![
                is(iface(MetaKey::Iifname), Operator::EQ, bridge()),
                is(iface(MetaKey::Oifname), Operator::NEQ, bridge()),
                is(iface(MetaKey::Oifname), Operator::EQ, any_bridge),
                Statement::Drop(None),
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
        let json = serde_json::to_string(&rules(&Network::default_bridge())).unwrap();
        for needle in [
            r#"{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.90.0.0","len":24}},"op":"=="}}"#,
            r#"{"match":{"left":{"meta":{"key":"oifname"}},"right":"huskbr0","op":"!="}}"#,
            r#"{"masquerade":null}"#,
            r#"{"match":{"left":{"meta":{"key":"oifname"}},"right":"huskbr*","op":"=="}},{"drop":null}"#,
            r#"{"match":{"left":{"meta":{"key":"iifname"}},"right":"huskbr0","op":"=="}},{"accept":null}"#,
        ] {
            assert!(json.contains(needle), "{needle} in {json}");
        }
    }
}
