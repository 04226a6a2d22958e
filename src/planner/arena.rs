//! Memory plan of one forward pass: every activation gets a slot in one arena.
//!
//! 1. Liveness: an activation lives from the step that writes it to the last step that reads it
//!    (skip connections stay alive until their decoder consumes them).
//! 2. Concatenation without copies: where the layout allows, a concat's inputs are written
//!    straight into their channel slices of the concat's buffer (CHW: a channel slice is
//!    contiguous), and a concat whose inputs already lie side by side in one buffer — each layer
//!    input of a dense block — is a view. Such members form a *group*, one allocation living
//!    from its first write to its last read. Merging a long-lived skip into its decoder's
//!    buffer saves a copy but holds the decoder's channels early, so each such choice is tried
//!    both ways and the smaller peak wins.
//! 3. In place: an elementwise op whose input dies at that op overwrites it.
//! 4. Offsets: groups sorted by size are placed at the lowest offset that overlaps no group alive
//!    at the same time; the arena is the highest end.
//!
//! Everything is in elements; multiply by the precision's element size for bytes.

use crate::error::Result;
use crate::graph::{Graph, NodeId, Op, Shape};

/// Where a node's output lives, in elements from the start of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub offset: usize,
    pub len: usize,
}

#[derive(Clone, Debug)]
pub struct ArenaPlan {
    pub h: usize,
    pub w: usize,
    pub shapes: Vec<Shape>,
    pub slots: Vec<Slot>,
    /// For each concat node, which inputs must be copied (the others are already in place).
    pub concat_copies: Vec<Vec<bool>>,
    /// Nodes that overwrite their input.
    pub in_place: Vec<bool>,
    /// Group (allocation) of each node and each group's live interval [first write, last read].
    pub group_of: Vec<usize>,
    pub group_live: Vec<(usize, usize)>,
    /// Where each group's buffer sits in the arena.
    pub group_slot: Vec<Slot>,
    pub arena_elems: usize,
}

/// How nodes share buffers, before offsets are assigned.
struct Grouping {
    /// (group, element offset inside the group's buffer) per node.
    member: Vec<(usize, usize)>,
    group_size: Vec<usize>,
    in_place: Vec<bool>,
}

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::ScaleShift(_) | Op::Relu | Op::Dropout | Op::BatchNorm(_))
}

impl ArenaPlan {
    pub fn new(graph: &Graph, h: usize, w: usize) -> Result<ArenaPlan> {
        let shapes = graph.shapes(h, w)?;
        let sizes: Vec<usize> = shapes.iter().map(|s| s.c * s.h * s.w).collect();
        let last = graph.last_use();
        let n = graph.nodes.len();
        let end = |i: usize| if last[i] == usize::MAX { n } else { last[i] };

        // Long-range merges (skip connections) are the choices; everything else merges always.
        let long = long_range_candidates(graph, &shapes);
        let mut best: Option<ArenaPlan> = None;
        // 2^k combinations; k is the number of skip connections (the depth), small.
        // Plus one plan with no shared buffers at all (every concat copies), which small maps
        // sometimes prefer.
        let combos = 1usize << long.len().min(10);
        for mask in 0..=combos {
            let allowed: Vec<(NodeId, NodeId)> =
                long.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, &p)| p).collect();
            let grouping = group(graph, &sizes, &last, &long, &allowed, mask < combos);
            let plan = place(graph, &shapes, &sizes, grouping, &end, h, w);
            if best.as_ref().is_none_or(|b| plan.arena_elems < b.arena_elems) {
                best = Some(plan);
            }
        }
        Ok(best.expect("at least one combination"))
    }

    /// Elements of the output of `node`.
    pub fn slot(&self, node: NodeId) -> Slot {
        self.slots[node]
    }

    /// This plan for an input of `h x w`. Every activation's size is `h·w` times a constant of the
    /// graph (its channels over its scale squared), so when both plans' sides are multiples of the
    /// down-sampling factor the greedy placement scales exactly: same order, offsets times
    /// `h·w / (h0·w0)`. Planning once at A x A and scaling is how tile searches stay fast.
    pub fn scaled_to(&self, graph: &Graph, h: usize, w: usize) -> Result<ArenaPlan> {
        let shapes = graph.shapes(h, w)?;
        // In 128 bits: `shapes` bounds the result, not the product on the way to it.
        let (num, den) = (h as u128 * w as u128, (self.h * self.w) as u128);
        let scale = |v: usize| {
            debug_assert!((v as u128 * num).is_multiple_of(den), "sizes must scale exactly");
            (v as u128 * num / den) as usize
        };
        let s = |x: Slot| Slot { offset: scale(x.offset), len: scale(x.len) };
        let plan = ArenaPlan {
            h,
            w,
            slots: self.slots.iter().map(|&x| s(x)).collect(),
            group_slot: self.group_slot.iter().map(|&x| s(x)).collect(),
            arena_elems: scale(self.arena_elems),
            shapes,
            ..self.clone()
        };
        debug_assert!(plan.slots.iter().zip(&plan.shapes).all(|(x, sh)| x.len == sh.c * sh.h * sh.w));
        Ok(plan)
    }
}

/// (producer, concat) pairs where the producer's output would sit in the concat's buffer across a
/// lower-resolution part of the network: U-Net and FC-DenseNet skip connections.
fn long_range_candidates(graph: &Graph, shapes: &[Shape]) -> Vec<(NodeId, NodeId)> {
    let mut out = Vec::new();
    for (ci, node) in graph.nodes.iter().enumerate() {
        if !matches!(node.op, Op::Concat) {
            continue;
        }
        for &p in &node.inputs {
            let deeper = (p + 1..ci).any(|j| shapes[j].h < shapes[ci].h);
            if deeper && p != 0 {
                out.push((p, ci));
            }
        }
    }
    out
}

/// An element of a concatenation's flattened channel sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// A node whose output can be written right here.
    Home(NodeId),
    /// A slot the concat `.0` fills by copying node `.1` (the network input, or a skip kept apart).
    Copy(NodeId, NodeId),
}

impl Part {
    fn node(self) -> NodeId {
        match self {
            Part::Home(i) | Part::Copy(_, i) => i,
        }
    }
}

fn find(hay: &[Part], needle: &[Part]) -> Option<usize> {
    (0..=hay.len().saturating_sub(needle.len())).find(|&i| hay[i..].starts_with(needle))
}

fn group(
    graph: &Graph,
    sizes: &[usize],
    last: &[usize],
    long: &[(NodeId, NodeId)],
    allowed: &[(NodeId, NodeId)],
    share: bool,
) -> Grouping {
    let n = graph.nodes.len();
    // Flattened sequence of every concat (nested concats inlined unless kept apart).
    let mut seqs: Vec<Option<Vec<Part>>> = vec![None; n];
    for (i, node) in graph.nodes.iter().enumerate() {
        if !matches!(node.op, Op::Concat) {
            continue;
        }
        let mut seq = Vec::new();
        for &p in &node.inputs {
            let apart = !share || p == 0 || (long.contains(&(p, i)) && !allowed.contains(&(p, i)));
            match (&seqs[p], apart) {
                (_, true) => seq.push(Part::Copy(i, p)),
                (Some(inner), false) => seq.extend_from_slice(inner),
                (None, false) => seq.push(Part::Home(p)),
            }
        }
        seqs[i] = Some(seq);
    }
    // Chains: merge sequences contained in or overlapping one another, so that every dense-block
    // layer input and block output is a contiguous run of one buffer.
    let mut chains: Vec<Vec<Part>> = seqs.iter().flatten().cloned().collect();
    loop {
        let mut merged = false;
        'outer: for a in 0..chains.len() {
            for b in 0..chains.len() {
                if a == b {
                    continue;
                }
                if find(&chains[a], &chains[b]).is_some() {
                    chains.remove(b);
                    merged = true;
                    break 'outer;
                }
                let (ca, cb) = (&chains[a], &chains[b]);
                if let Some(k) = (1..ca.len().min(cb.len())).rev().find(|&k| ca[ca.len() - k..] == cb[..k]) {
                    let mut m = ca.clone();
                    m.extend_from_slice(&cb[k..]);
                    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
                    chains.remove(hi);
                    chains[lo] = m;
                    merged = true;
                    break 'outer;
                }
            }
        }
        if !merged {
            break;
        }
    }
    // Each chain is one buffer (group); every Home part is written in place, and every concat
    // whose sequence is a run of the chain is a view of it.
    let mut member: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut group_size = Vec::new();
    for chain in &chains {
        let gid = group_size.len();
        let mut offsets = Vec::with_capacity(chain.len());
        let mut total = 0;
        for part in chain {
            offsets.push(total);
            total += sizes[part.node()];
        }
        group_size.push(total);
        for (part, &off) in chain.iter().zip(&offsets) {
            if let Part::Home(p) = *part {
                member[p].get_or_insert((gid, off));
            }
        }
        for (i, seq) in seqs.iter().enumerate() {
            if let Some(k) = seq.as_ref().and_then(|s| find(chain, s)) {
                member[i].get_or_insert((gid, offsets[k]));
            }
        }
    }
    let mut member: Vec<(usize, usize)> = member
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.unwrap_or_else(|| {
                group_size.push(sizes[i]);
                (group_size.len() - 1, 0)
            })
        })
        .collect();
    // In place: elementwise ops whose input is read by nothing later and is a buffer of its own.
    let mut in_place = vec![false; n];
    let alone = |m: &[(usize, usize)], x: NodeId| m.iter().filter(|&&(g, _)| g == m[x].0).count() == 1;
    for i in 1..n {
        let node = &graph.nodes[i];
        if is_elementwise(&node.op) && node.inputs.len() == 1 && alone(&member, i) {
            let x = node.inputs[0];
            if x != 0 && last[x] == i && alone(&member, x) {
                member[i] = member[x];
                in_place[i] = true;
            }
        }
    }
    Grouping { member, group_size, in_place }
}

fn place(
    graph: &Graph,
    shapes: &[Shape],
    sizes: &[usize],
    g: Grouping,
    end: &dyn Fn(usize) -> usize,
    h: usize,
    w: usize,
) -> ArenaPlan {
    let n = graph.nodes.len();
    let groups = g.group_size.len();
    let mut live = vec![(usize::MAX, 0usize); groups];
    for i in 0..n {
        let gid = g.member[i].0;
        live[gid].0 = live[gid].0.min(i);
        live[gid].1 = live[gid].1.max(end(i));
    }
    let mut order: Vec<usize> = (0..groups).filter(|&k| live[k].0 != usize::MAX).collect();
    // Largest first, then earliest: a classic greedy that packs the long-lived buffers low.
    order.sort_by_key(|&k| (std::cmp::Reverse(g.group_size[k]), live[k].0));
    let mut offset = vec![0usize; groups];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0;
    for &k in &order {
        let size = g.group_size[k];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&q| live[q].0 <= live[k].1 && live[k].0 <= live[q].1)
            .map(|&q| (offset[q], offset[q] + g.group_size[q]))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (s, e) in busy {
            if s >= at + size {
                break;
            }
            at = at.max(e);
        }
        offset[k] = at;
        arena = arena.max(at + size);
        placed.push(k);
    }
    let slots: Vec<Slot> =
        (0..n).map(|i| Slot { offset: offset[g.member[i].0] + g.member[i].1, len: sizes[i] }).collect();
    let concat_copies = (0..n)
        .map(|i| {
            let node = &graph.nodes[i];
            if !matches!(node.op, Op::Concat) {
                return Vec::new();
            }
            let mut off = slots[i].offset;
            node.inputs
                .iter()
                .map(|&p| {
                    let in_place = slots[p].offset == off;
                    off += sizes[p];
                    !in_place
                })
                .collect()
        })
        .collect();
    ArenaPlan {
        h,
        w,
        shapes: shapes.to_vec(),
        slots,
        concat_copies,
        in_place: g.in_place,
        group_of: g.member.iter().map(|m| m.0).collect(),
        group_live: live.clone(),
        // Groups no node ended up in (chains whose every part lives elsewhere) take no memory.
        group_slot: (0..groups)
            .map(|k| Slot { offset: offset[k], len: if live[k].0 == usize::MAX { 0 } else { g.group_size[k] } })
            .collect(),
        arena_elems: arena,
    }
}

impl ArenaPlan {
    /// Check the plan's one safety property: no op writes memory that holds a value some later op
    /// still reads, except a concat writing a part already in place or an op declared in place.
    /// Returns a description of the first violation.
    pub fn validate(&self, graph: &Graph) -> std::result::Result<(), String> {
        let last = graph.last_use();
        let n = graph.nodes.len();
        let overlaps = |a: Slot, b: Slot| a.offset < b.offset + b.len && b.offset < a.offset + a.len;
        for t in 0..n {
            let node = &graph.nodes[t];
            // Regions node t writes.
            let writes: Vec<Slot> = match node.op {
                Op::Concat => {
                    let mut off = self.slots[t].offset;
                    node.inputs
                        .iter()
                        .zip(&self.concat_copies[t])
                        .filter_map(|(&p, &copy)| {
                            let s = Slot { offset: off, len: self.slots[p].len };
                            off += s.len;
                            copy.then_some(s)
                        })
                        .collect()
                }
                _ if self.in_place[t] => vec![],
                _ => vec![self.slots[t]],
            };
            for (i, &l) in last.iter().enumerate().take(t) {
                let end = if l == usize::MAX { n } else { l };
                if end < t {
                    continue;
                }
                for w in &writes {
                    if overlaps(*w, self.slots[i]) {
                        return Err(format!(
                            "step {t} ('{}') writes {:?} over live value of node {i} ('{}') at {:?} (read until {end})",
                            node.name, w, graph.nodes[i].name, self.slots[i]
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Peak elements of the plain strategy — one buffer per activation, freed after its last reader,
/// concatenations copied — for comparison with the plan (`seamless plan`, docs/memory.md).
pub fn liveness_peak(graph: &Graph, h: usize, w: usize) -> Result<usize> {
    let shapes = graph.shapes(h, w)?;
    let last = graph.last_use();
    let (mut live, mut peak) = (0usize, 0usize);
    for (i, node) in graph.nodes.iter().enumerate() {
        live += shapes[i].c * shapes[i].h * shapes[i].w;
        peak = peak.max(live);
        for &j in &node.inputs {
            if last[j] == i {
                live -= shapes[j].c * shapes[j].h * shapes[j].w;
            }
        }
    }
    Ok(peak)
}
