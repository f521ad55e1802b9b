//! Graph-level checks: references, cycles, and whether each edge's shape fits its use.

use std::collections::{BTreeMap, BTreeSet};

use super::walk::nearest;
use super::{Envelope, Format, NodeSpec, Pipeline, Problem, Ref, SinkMode, SinkTarget, Spanned};

/// What the planner knows about a collection without running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Rows carry a meaningful key (set by a source key, `key_by`, or a keyed node).
    pub keyed: bool,
    /// The collection only ever receives insertions (events); no retractions.
    pub append_only: bool,
}

/// The checked graph: a topological order of the nodes and the shape of every output.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Node indices (into `Pipeline::nodes`) such that inputs come before their readers.
    pub order: Vec<usize>,
    /// The shape of every referencable collection, by reference (`src`, `node`, `node.out`).
    pub shapes: BTreeMap<String, Shape>,
}

/// Checks references, cycles and shapes; returns every problem found.
pub fn check(p: &Pipeline) -> Result<Graph, Vec<Problem>> {
    check_partial(p, &BTreeSet::new(), false)
}

/// As [`check`], for a pipeline some of whose elements did not parse: references to the
/// `broken` names are not reported again, shapes are not inferred past them, and a pipeline
/// whose sinks all failed to parse (`broken_sinks`) is not also said to have none.
pub fn check_partial(p: &Pipeline, broken: &BTreeSet<String>, broken_sinks: bool) -> Result<Graph, Vec<Problem>> {
    let file = p.file.as_path();
    let mut problems = Vec::new();

    // Every name a reference may use, and the outputs it offers.
    let mut producers: BTreeMap<&str, &'static [&'static str]> = BTreeMap::new();
    for s in &p.sources {
        producers.insert(&s.name.value, &[]);
    }
    for n in &p.nodes {
        if producers.contains_key(n.name.value.as_str()) {
            problems.push(Problem::at(
                file,
                &n.name,
                format!(
                    "`{}` is already the name of a source; names are shared by sources and nodes",
                    n.name.value
                ),
            ));
        }
        producers.insert(&n.name.value, n.spec.outputs());
    }
    check_start_after(p, &mut problems);
    let all_refs: Vec<String> = producers
        .iter()
        .flat_map(|(name, outs)| {
            if outs.is_empty() {
                vec![(*name).to_owned()]
            } else {
                outs.iter().map(|o| format!("{name}.{o}")).collect()
            }
        })
        .collect();
    let resolve = |r: &Ref, problems: &mut Vec<Problem>| -> bool {
        let (name, output) = match r.value.split_once('.') {
            Some((n, o)) => (n, Some(o)),
            None => (r.value.as_str(), None),
        };
        match (producers.get(name), output) {
            (None, _) if broken.contains(name) => false,
            (None, _) => {
                let candidates: Vec<&str> = all_refs.iter().map(String::as_str).collect();
                let hint = nearest(&r.value, &candidates)
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_else(|| format!("; defined: {}", candidates.join(", ")));
                problems.push(Problem::at(
                    file,
                    r,
                    format!("`{}` is not a source or node{hint}", r.value),
                ));
                false
            }
            (Some(outs), None) if !outs.is_empty() => {
                let list: Vec<String> = outs.iter().map(|o| format!("{name}.{o}")).collect();
                problems.push(Problem::at(
                    file,
                    r,
                    format!("`{name}` has several outputs; reference one of: {}", list.join(", ")),
                ));
                false
            }
            (Some(outs), Some(o)) if !outs.contains(&o) => {
                let msg = if outs.is_empty() {
                    format!("`{name}` has a single output: reference it as `{name}`")
                } else {
                    format!("`{name}` has no output `{o}`; its outputs are: {}", outs.join(", "))
                };
                problems.push(Problem::at(file, r, msg));
                false
            }
            _ => true,
        }
    };

    let node_index: BTreeMap<&str, usize> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.value.as_str(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); p.nodes.len()];
    let mut refs_ok = true;
    for (i, n) in p.nodes.iter().enumerate() {
        for r in n.spec.inputs() {
            refs_ok &= resolve(r, &mut problems);
            let base = r.value.split('.').next().unwrap_or_default();
            if let Some(&j) = node_index.get(base) {
                deps[i].push(j);
            }
        }
    }
    for s in &p.sinks {
        refs_ok &= resolve(&s.input, &mut problems);
    }
    if p.sinks.is_empty() && !broken_sinks {
        problems.push(Problem {
            file: file.to_path_buf(),
            loc: None,
            path: "sinks".to_owned(),
            message: "the pipeline has no sinks, so it would compute nothing visible; add a `[sinks.NAME]` table"
                .to_owned(),
        });
    }

    let order = match topo_order(&deps) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<&str> = cycle.iter().map(|&i| p.nodes[i].name.value.as_str()).collect();
            let first = &p.nodes[cycle[0]].name;
            problems.push(Problem::at(
                file,
                first,
                format!("the graph has a cycle: {} -> {}", names.join(" -> "), names[0]),
            ));
            return Err(sorted(problems));
        }
    };
    let shapes = infer_shapes(p, &order, &mut problems);
    check_checkpoint_coverage(p, &shapes, &mut problems);
    for s in &p.sinks {
        let Some(shape) = shapes.get(&s.input.value) else {
            continue;
        };
        match s.mode.value {
            SinkMode::Upsert if !shape.keyed => problems.push(Problem::at(
                file,
                &s.mode,
                format!(
                    "upsert mode needs a keyed input, and `{}` is not keyed; add a `key_by` node or use mode \"changelog\"",
                    s.input.value
                ),
            )),
            SinkMode::Append if !shape.append_only => problems.push(Problem::at(
                file,
                &s.mode,
                format!(
                    "append mode writes insertions only, but `{}` also retracts; use mode \"upsert\" or \"changelog\"",
                    s.input.value
                ),
            )),
            _ => {}
        }
        if s.format.value == Format::CdsUpdate {
            let from_cds = cds_updates_producers(p).contains(&s.input.value);
            if s.mode.value != SinkMode::Append || !from_cds {
                problems.push(Problem::at(
                    file,
                    &s.format,
                    format!(
                        "format \"cds-update\" writes contact-discovery updates: it needs mode \"append\" and the \
                         `cds_updates` output of a `cds` node or a source of that format, and `{}` is not one",
                        s.input.value
                    ),
                ));
            }
        }
    }
    check_server(p, &mut problems);
    if problems.is_empty() && refs_ok {
        Ok(Graph { order, shapes })
    } else {
        Err(sorted(problems))
    }
}

/// The `[server]`'s services name served sinks of the right kind; served sinks have a server.
fn check_server(p: &Pipeline, problems: &mut Vec<Problem>) {
    let file = &p.file;
    let served = |name: &str| {
        p.sinks.iter().find_map(|s| match &s.target {
            SinkTarget::Served(spec) if s.name.value == name => Some(spec),
            _ => None,
        })
    };
    let Some(server) = &p.server else {
        if let Some(s) = p.sinks.iter().find(|s| matches!(s.target, SinkTarget::Served(_))) {
            problems.push(Problem::at(
                file,
                &s.name,
                "a served sink needs a `[server]` section (a `grpc` or `http` listen address and a `token_key`)",
            ));
        }
        return;
    };
    let field = |f: &Option<Spanned<String>>| f.as_ref().map(|f| f.value.clone());
    let names: Vec<&str> = p
        .sinks
        .iter()
        .filter(|s| matches!(s.target, SinkTarget::Served(_)))
        .map(|s| s.name.value.as_str())
        .collect();
    let missing = |view: &Spanned<String>| {
        Problem::at(
            file,
            view,
            format!(
                "`{}` is not a served sink (served sinks: {})",
                view.value,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        )
    };
    if let Some(a) = &server.account_stream {
        match served(&a.view.value) {
            None => problems.push(missing(&a.view)),
            Some(spec) if spec.partition_by.is_some() || spec.version_field.is_some() => problems.push(Problem::at(
                file,
                &a.view,
                format!(
                    "the account stream serves a whole directory by change time: `{}` must have neither \
                     `partition_by` nor `version_field`",
                    a.view.value
                ),
            )),
            Some(_) => {}
        }
    }
    if let Some(m) = &server.messages {
        match served(&m.view.value) {
            None => problems.push(missing(&m.view)),
            Some(spec)
                if field(&spec.partition_by).as_deref() != Some("user")
                    || field(&spec.version_field).as_deref() != Some("timestamp") =>
            {
                problems.push(Problem::at(
                    file,
                    &m.view,
                    format!(
                        "the messages service reads each user's feed by timestamp: `{}` needs \
                         `partition_by = \"user\"` and `version_field = \"timestamp\"`",
                        m.view.value
                    ),
                ))
            }
            Some(_) => {}
        }
    }
}

/// The references whose rows are contact-discovery updates.
fn cds_updates_producers(p: &Pipeline) -> BTreeSet<String> {
    let sources = p
        .sources
        .iter()
        .filter(|s| s.format == Format::CdsUpdate)
        .map(|s| s.name.value.clone());
    let nodes = p.nodes.iter().filter_map(|n| match n.spec {
        NodeSpec::Cds(_) => Some(format!("{}.cds_updates", n.name.value)),
        _ => None,
    });
    sources.chain(nodes).collect()
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort();
    problems.dedup();
    problems
}

/// Kahn's algorithm; on a cycle returns the nodes of one cycle in order.
fn topo_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut order = Vec::with_capacity(n);
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        state: &mut [u8],
        order: &mut Vec<usize>,
        stack: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                return Err(stack[start..].to_vec());
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            visit(d, deps, state, order, stack)?;
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..n {
        visit(i, deps, &mut state, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

fn infer_shapes(p: &Pipeline, order: &[usize], problems: &mut Vec<Problem>) -> BTreeMap<String, Shape> {
    let file = p.file.as_path();
    let mut shapes = BTreeMap::new();
    for s in &p.sources {
        let shape = match &s.envelope {
            Envelope::Append { key } => Shape {
                keyed: key.is_some(),
                append_only: true,
            },
            Envelope::Upsert { .. } => Shape {
                keyed: true,
                append_only: false,
            },
        };
        shapes.insert(s.name.value.clone(), shape);
    }
    for &i in order {
        let n = &p.nodes[i];
        let get = |r: &Ref| shapes.get(&r.value).copied();
        let need_keyed = |r: &Ref, what: &str, problems: &mut Vec<Problem>| {
            if get(r).is_some_and(|s| !s.keyed) {
                problems.push(Problem::at(
                    file,
                    r,
                    format!(
                        "{what} needs a keyed input, and `{}` is not keyed; add a `key_by` node or a source `key`",
                        r.value
                    ),
                ));
            }
        };
        let need_events = |r: &Ref, what: &str, problems: &mut Vec<Problem>| {
            if get(r).is_some_and(|s| !s.append_only) {
                problems.push(Problem::at(
                    file,
                    r,
                    format!("{what}, and `{}` retracts; use an append source", r.value),
                ));
            }
        };
        // A domain input that is a table (latest value per key) must not be events.
        let need_table = |r: &Ref, what: &str, key: &str, problems: &mut Vec<Problem>| {
            if get(r).is_some_and(|s| s.append_only) {
                problems.push(Problem::at(
                    file,
                    r,
                    format!(
                        "{what}, an upsert collection, and `{}` is append-only; read it with envelope = \"upsert\" \
                         and key = {key}",
                        r.value
                    ),
                ));
            }
        };
        // Every output of a domain node is keyed; only the listed ones are append-only.
        let outputs = |shapes: &mut BTreeMap<String, Shape>, name: &str, append_only: &[&str]| {
            for o in n.spec.outputs() {
                let shape = Shape {
                    keyed: true,
                    append_only: append_only.contains(o),
                };
                shapes.insert(format!("{name}.{o}"), shape);
            }
        };
        let out = match &n.spec {
            NodeSpec::Filter { input, .. } | NodeSpec::Map { input, .. } => get(input),
            NodeSpec::KeyBy { input, .. } => get(input).map(|s| Shape { keyed: true, ..s }),
            NodeSpec::Latest { input, order_by } => {
                need_keyed(input, "`latest`", problems);
                if order_by.is_none() && get(input).is_some_and(|s| !s.append_only) {
                    problems.push(Problem::at(
                        file,
                        input,
                        format!(
                            "`latest` by arrival needs an append-only input, and `{}` retracts; set `order_by` to a field",
                            input.value
                        ),
                    ));
                }
                Some(Shape {
                    keyed: true,
                    append_only: false,
                })
            }
            NodeSpec::Join { left, right, .. } => {
                need_keyed(left, "`join`", problems);
                need_keyed(right, "`join`", problems);
                Some(Shape {
                    keyed: true,
                    append_only: false,
                })
            }
            NodeSpec::Count { input } => {
                need_keyed(input, "`count`", problems);
                Some(Shape {
                    keyed: true,
                    append_only: false,
                })
            }
            NodeSpec::Aggregate { input, .. } => {
                need_keyed(input, "`aggregate`", problems);
                Some(Shape {
                    keyed: true,
                    append_only: false,
                })
            }
            NodeSpec::Union { inputs } => {
                let shapes_in: Vec<Shape> = inputs.iter().filter_map(get).collect();
                if shapes_in.iter().any(|s| s.keyed) && shapes_in.iter().any(|s| !s.keyed) {
                    problems.push(Problem::at(
                        file,
                        &n.name,
                        "a union mixes keyed and unkeyed inputs; key them the same way first",
                    ));
                }
                Some(Shape {
                    keyed: shapes_in.iter().all(|s| s.keyed),
                    append_only: shapes_in.iter().all(|s| s.append_only),
                })
            }
            NodeSpec::Delivery(d) => {
                need_events(&d.input, "`delivery` reads delivery reports as events", problems);
                outputs(&mut shapes, &n.name.value, &[]);
                None
            }
            NodeSpec::Contacts(c) => {
                need_events(&c.changes, "`contacts` reads client changes as events", problems);
                need_table(
                    &c.contact_data,
                    "`contact_data` is the contact-data service's mapping",
                    r#"["app_code", "contact_field_id", "contact_field_value"]"#,
                    problems,
                );
                // Created anonymous contacts are events for their consumer: each is written once.
                outputs(&mut shapes, &n.name.value, &["anonymous_contacts_created"]);
                None
            }
            NodeSpec::Cds(c) => {
                need_events(&c.changes, "`cds` reads change records as events", problems);
                if let Some(snapshot) = &c.snapshot {
                    need_events(snapshot, "`cds` reads scanned items as events", problems);
                }
                outputs(&mut shapes, &n.name.value, &["cds_updates"]);
                None
            }
            NodeSpec::Fanout(f) => {
                need_events(&f.events, "`fanout` reads published events as events", problems);
                need_table(
                    &f.subscribers,
                    "`subscribers` is the subscriber table",
                    r#"["id"]"#,
                    problems,
                );
                // Deliveries are events for the webhook sink: each is sent, not updated.
                outputs(&mut shapes, &n.name.value, &["deliveries"]);
                None
            }
            NodeSpec::Messages(m) => {
                need_events(&m.ops, "`messages` reads message ops as events", problems);
                outputs(
                    &mut shapes,
                    &n.name.value,
                    &["accepted", "rejections", "file_usage_events"],
                );
                None
            }
        };
        if let Some(shape) = out {
            shapes.insert(n.name.value.clone(), shape);
        }
    }
    shapes
}

/// With checkpoints on, every node's state must be one a checkpoint restores: folds and the
/// messages timeline (saved), state rebuilt from what they and upsert sources output, or
/// none. Operators that keep append events themselves (a join or a count over events) would
/// come back from a restart without their history, so they are refused up front.
fn check_checkpoint_coverage(p: &Pipeline, shapes: &BTreeMap<String, Shape>, problems: &mut Vec<Problem>) {
    if p.checkpoint_dir.is_none() {
        return;
    }
    for n in &p.nodes {
        let kind = n.spec.kind();
        let message = match &n.spec {
            NodeSpec::Join { .. } | NodeSpec::Count { .. } => n
                .spec
                .inputs()
                .into_iter()
                .find(|r| shapes.get(&r.value).is_some_and(|s| s.append_only))
                .map(|r| {
                    format!(
                        "with checkpoints, a `{kind}` node cannot read events (`{}` is append-only): its history \
                         would not survive a restart; read a table (an upsert source) instead",
                        r.value
                    )
                }),
            _ => None,
        };
        if let Some(message) = message {
            problems.push(Problem::at(&p.file, &n.name, message));
        }
    }
}

/// `start_after` names other sources, without cycles (a cycle never starts). A bounded source
/// is waited for until it ends, an unbounded one until it has first caught up.
fn check_start_after(p: &Pipeline, problems: &mut Vec<Problem>) {
    let file = p.file.as_path();
    let index: BTreeMap<&str, usize> = p
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.value.as_str(), i))
        .collect();
    for s in &p.sources {
        for after in &s.start_after {
            let Some(&i) = index.get(after.value.as_str()) else {
                let names: Vec<&str> = index.keys().copied().collect();
                problems.push(Problem::at(
                    file,
                    after,
                    format!("`{}` is not a source; sources: {}", after.value, names.join(", ")),
                ));
                continue;
            };
            let other = &p.sources[i];
            if other.name.value == s.name.value {
                problems.push(Problem::at(file, after, "a source cannot start after itself"));
            }
        }
    }
    // A cycle: following `start_after` from a source comes back to it.
    for (start, s) in p.sources.iter().enumerate() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = vec![start];
        while let Some(i) = stack.pop() {
            for after in &p.sources[i].start_after {
                match index.get(after.value.as_str()) {
                    Some(&j) if j == start && i != start => {
                        problems.push(Problem::at(
                            file,
                            &s.name,
                            format!("`{}` waits for itself through `start_after`", s.name.value),
                        ));
                        stack.clear();
                        break;
                    }
                    Some(&j) if seen.insert(j) => stack.push(j),
                    _ => {}
                }
            }
        }
    }
}
