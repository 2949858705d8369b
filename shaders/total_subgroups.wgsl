// The batch-total kernel's subgroup levels (see shaders/subgroups.wgsl and
// subgroup_levels in shaders/rows_subgroups.wgsl, its twin).

fn shuffle_total(t: Total, m: u32) -> Total {
    return Total(subgroupShuffleXor(t.sum, m), subgroupShuffleXor(t.scaled, m), subgroupShuffleXor(t.weight, m),
                 subgroupShuffleXor(t.infs, m), subgroupShuffleXor(t.neg_infs, m), subgroupShuffleXor(t.bad_row, m),
                 subgroupShuffleXor(t.code, m), subgroupShuffleXor(t.column, m), subgroupShuffleXor(t.index, m),
                 subgroupShuffleXor(t.bad_aux_p, m), subgroupShuffleXor(t.bad_aux_q, m));
}

fn subgroup_levels(inv: Invocation, n: u32) -> u32 {
    let slot = subgroup_slot(inv);
    let g = min(n, inv.sg_size);
    var t = shared_totals[slot];
    for (var m = 1u; m < g; m = m * 2u) {
        let other = shuffle_total(t, m);
        var lo = t;
        var hi = other;
        if (partner_is_lower(inv, m)) {
            lo = other;
            hi = t;
        }
        t = merge_totals(lo, hi);
    }
    if (slot % g == 0u) {
        shared_totals[slot] = t;
    }
    return g;
}
