// The batch-total kernel's partials for the subgroup levels of
// shaders/subgroups.wgsl.

fn sg_shuffle(t: Total, m: u32) -> Total {
    return Total(subgroupShuffleXor(t.sum, m), subgroupShuffleXor(t.scaled, m), subgroupShuffleXor(t.weight, m),
                 subgroupShuffleXor(t.infs, m), subgroupShuffleXor(t.neg_infs, m), subgroupShuffleXor(t.bad_row, m),
                 subgroupShuffleXor(t.code, m), subgroupShuffleXor(t.column, m), subgroupShuffleXor(t.index, m),
                 subgroupShuffleXor(t.bad_aux_p, m), subgroupShuffleXor(t.bad_aux_q, m));
}

fn sg_merge(lo: Total, hi: Total) -> Total { return merge_totals(lo, hi); }
fn sg_load(slot: u32) -> Total { return shared_totals[slot]; }
fn sg_store(slot: u32, t: Total) { shared_totals[slot] = t; }
