//! What running an [`ArenaPlan`] means, node by node, as plain data: which arena regions each node
//! reads and writes, and whether it copies, launches an op, works in place or does nothing.
//!
//! Both executors follow these steps: the CUDA backend a whole [`Schedule`], the CPU backend the
//! same [`Steps`] one at a time, so the decisions a device executor makes over the arena are
//! tested without its device (`tests/arena_steps.rs` runs the CPU executor, freed regions
//! poisoned with NaN, on the graphs the CUDA backend runs). The checks an executor relies on for
//! disjoint views (every region inside the arena, a launch's input apart from its output, a
//! copy's source apart from its destination) are made here, before any view of a step is taken.

use super::arena::{ArenaPlan, Slot};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op};

impl Slot {
    /// One past the last element.
    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    /// The elements, as an index range of the arena.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.end()
    }

    /// Whether the two regions share an element (empty regions share none).
    pub fn overlaps(&self, other: &Slot) -> bool {
        self.len > 0 && other.len > 0 && self.offset < other.end() && other.offset < self.end()
    }
}

/// One thing a node does to the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the network's input window into `dst`.
    Input { dst: Slot },
    /// Copy `src` to `dst` (disjoint): a concatenation part that is not already in place, or an
    /// identity op (dropout) that is not in place.
    Copy { src: Slot, dst: Slot },
    /// Run the node's op reading `src` and writing all of `dst` (disjoint).
    Launch { src: Slot, dst: Slot },
    /// Run the node's elementwise op over `slot`, overwriting its input.
    InPlace { slot: Slot },
}

/// Everything one graph node does, in order, then the regions that hold no live value after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStep {
    pub node: NodeId,
    /// Empty for a node that costs nothing: a concatenation whose parts are all in place, an
    /// in-place dropout.
    pub actions: Vec<Action>,
    /// Buffers whose last reader is this node (never the output's): free to be overwritten.
    pub freed: Vec<Slot>,
}

/// The whole forward pass over one arena.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub steps: Vec<NodeStep>,
    pub arena_elems: usize,
    /// Where the input window goes and where the output is read from.
    pub input: Slot,
    pub output: Slot,
}

fn internal(msg: String) -> Error {
    Error::Backend(format!("internal: arena schedule: {msg}"))
}

/// Ops that write their output with an elementwise kernel that may also run in place.
fn in_place_capable(op: &Op) -> bool {
    matches!(op, Op::ScaleShift(_) | Op::BatchNorm(_) | Op::Relu | Op::Dropout)
}

/// The steps of a plan, made and checked one node at a time in execution order: what
/// [`Schedule::new`] collects, and what the CPU executor walks as it goes (keeping no list, so
/// that its memory stays exactly the arena, the workspace and the packed weights).
pub struct Steps<'a> {
    graph: &'a Graph,
    plan: &'a ArenaPlan,
    next: NodeId,
    seen_input: bool,
}

impl<'a> Steps<'a> {
    /// The walk of `graph` under `plan` (made for that graph).
    pub fn new(graph: &'a Graph, plan: &'a ArenaPlan) -> Result<Steps<'a>> {
        let n = graph.nodes.len();
        if plan.slots.len() != n || plan.shapes.len() != n {
            return Err(internal(format!("plan for {} nodes, graph of {n}", plan.slots.len())));
        }
        Ok(Steps { graph, plan, next: 0, seen_input: false })
    }

    /// The step of node `i`, checked for the properties an executor needs to take disjoint views
    /// of one arena.
    fn step(&mut self, i: NodeId) -> Result<NodeStep> {
        let (graph, plan) = (self.graph, self.plan);
        let node = &graph.nodes[i];
        let inside = |s: Slot, what: &str| {
            if s.end() <= plan.arena_elems {
                Ok(s)
            } else {
                Err(internal(format!("{what} {s:?} outside the arena of {} elements", plan.arena_elems)))
            }
        };
        let disjoint = |a: Slot, b: Slot, what: &str| {
            if a.overlaps(&b) { Err(internal(format!("{what}: {a:?} overlaps {b:?}"))) } else { Ok(()) }
        };
        let dst = inside(plan.slots[i], &node.name)?;
        let single_input = || {
            if node.inputs.len() == 1 {
                Ok(inside(plan.slots[node.inputs[0]], &node.name)?)
            } else {
                Err(internal(format!("{} ({}) has {} inputs", node.name, node.op.kind(), node.inputs.len())))
            }
        };
        let actions = match &node.op {
            Op::Input { .. } => {
                if std::mem::replace(&mut self.seen_input, true) {
                    return Err(internal("two input nodes".into()));
                }
                vec![Action::Input { dst }]
            }
            Op::Concat => {
                let mut off = dst.offset;
                let mut acts = Vec::new();
                for (&p, &copy) in node.inputs.iter().zip(&plan.concat_copies[i]) {
                    let src = inside(plan.slots[p], &node.name)?;
                    let part = Slot { offset: off, len: src.len };
                    if copy {
                        disjoint(src, part, &format!("{}: concat copy", node.name))?;
                        acts.push(Action::Copy { src, dst: part });
                    } else if src != part {
                        return Err(internal(format!("{}: part {p} at {src:?}, expected {part:?}", node.name)));
                    }
                    off += src.len;
                }
                if off != dst.end() {
                    return Err(internal(format!("{}: parts fill {} of {dst:?}", node.name, off - dst.offset)));
                }
                acts
            }
            op if plan.in_place[i] => {
                let src = single_input()?;
                if !in_place_capable(op) || src != dst {
                    return Err(internal(format!("{} ({}) in place at {src:?} -> {dst:?}", node.name, op.kind())));
                }
                if matches!(op, Op::Dropout) { vec![] } else { vec![Action::InPlace { slot: dst }] }
            }
            Op::Dropout => {
                let src = single_input()?;
                disjoint(src, dst, &node.name)?;
                vec![Action::Copy { src, dst }]
            }
            _ => {
                let src = single_input()?;
                disjoint(src, dst, &node.name)?;
                vec![Action::Launch { src, dst }]
            }
        };
        let output_group = plan.group_of[graph.output];
        let freed = plan
            .group_live
            .iter()
            .enumerate()
            .filter(|&(g, &(_, end))| end == i && g != output_group)
            .map(|(g, _)| plan.group_slot[g])
            .filter(|s| s.len > 0)
            .collect();
        Ok(NodeStep { node: i, actions, freed })
    }
}

impl Iterator for Steps<'_> {
    type Item = Result<NodeStep>;

    fn next(&mut self) -> Option<Result<NodeStep>> {
        let i = self.next;
        if i == self.graph.nodes.len() {
            return None;
        }
        self.next += 1;
        Some(self.step(i))
    }
}

impl Schedule {
    /// The steps for `graph` under `plan` (made for that graph), every one checked before a
    /// device executor takes its first view of the arena.
    pub fn new(graph: &Graph, plan: &ArenaPlan) -> Result<Schedule> {
        let steps: Vec<NodeStep> = Steps::new(graph, plan)?.collect::<Result<_>>()?;
        let input = steps.iter().flat_map(|s| &s.actions).find_map(|a| match *a {
            Action::Input { dst } => Some(dst),
            _ => None,
        });
        Ok(Schedule {
            steps,
            arena_elems: plan.arena_elems,
            input: input.ok_or_else(|| internal("no input node".into()))?,
            output: plan.slots[graph.output],
        })
    }

    /// Nodes that launch work of their own (for per-layer timing tables).
    pub fn launches(&self) -> impl Iterator<Item = &NodeStep> {
        self.steps.iter().filter(|s| !s.actions.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_overlap_only_when_they_share_an_element() {
        let s = |offset, len| Slot { offset, len };
        assert!(s(0, 4).overlaps(&s(3, 2)));
        assert!(!s(0, 4).overlaps(&s(4, 2)));
        assert!(!s(5, 0).overlaps(&s(0, 10)));
        assert!(s(2, 1).overlaps(&s(0, 10)));
    }
}
