//! The pipeline graph as Graphviz DOT, for `sluice graph`.

use std::fmt::Write;

use super::Pipeline;

/// Renders sources, nodes and sinks as a left-to-right DOT digraph.
pub fn to_dot(p: &Pipeline) -> String {
    let mut out = String::new();
    // Escape each user-written part once; the `\n` joining label lines is DOT's own escape.
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let q = |s: &str| format!("\"{s}\"");
    let _ = writeln!(out, "digraph {} {{", q(&esc(&p.name)));
    let _ = writeln!(out, "  rankdir=LR;");
    for s in &p.sources {
        let label = format!("{}\\n{} source", esc(&s.name.value), s.spec.kind());
        let _ = writeln!(out, "  {} [shape=cylinder, label={}];", q(&s.name.value), q(&label));
        for after in &s.start_after {
            let _ = writeln!(
                out,
                "  {} -> {} [style=dashed, label=\"then\"];",
                q(&after.value),
                q(&s.name.value)
            );
        }
    }
    for n in &p.nodes {
        let label = format!("{}\\n{}", esc(&n.name.value), n.spec.kind());
        let _ = writeln!(out, "  {} [shape=box, label={}];", q(&n.name.value), q(&label));
        for r in n.spec.inputs() {
            let (from, port) = split(&r.value);
            let _ = writeln!(out, "  {} -> {}{};", q(from), q(&n.name.value), port_label(port));
        }
    }
    for s in &p.sinks {
        let id = format!("sink:{}", s.name.value);
        let label = format!(
            "{}\\n{} sink ({})",
            esc(&s.name.value),
            s.target.kind(),
            s.mode.value.name()
        );
        let _ = writeln!(out, "  {} [shape=house, label={}];", q(&id), q(&label));
        let (from, port) = split(&s.input.value);
        let _ = writeln!(out, "  {} -> {}{};", q(from), q(&id), port_label(port));
    }
    let _ = writeln!(out, "}}");
    out
}

fn split(r: &str) -> (&str, Option<&str>) {
    match r.split_once('.') {
        Some((n, o)) => (n, Some(o)),
        None => (r, None),
    }
}

fn port_label(port: Option<&str>) -> String {
    port.map(|p| format!(" [label=\"{p}\"]")).unwrap_or_default()
}
