// The rows kernel's subgroup levels (see shaders/subgroups.wgsl).

fn shuffle_state(s: State, m: u32) -> State {
    return State(subgroupShuffleXor(s.key, m), subgroupShuffleXor(s.ma, m), subgroupShuffleXor(s.sa, m),
                 subgroupShuffleXor(s.u, m), subgroupShuffleXor(s.mb, m), subgroupShuffleXor(s.sb, m),
                 subgroupShuffleXor(s.v, m), subgroupShuffleXor(s.t, m), subgroupShuffleXor(s.flags, m));
}

// The first levels of the tree over each segment of n states (n a power of
// two) of shared_states, by butterflies within subgroups: each segment's (or
// each subgroup's, if smaller) total lands in its first slot. Returns the
// stride the tree continues from. Called by every invocation, after the
// barrier that follows the staging; needs a barrier before the slots are read.
fn subgroup_levels(inv: Invocation, n: u32) -> u32 {
    let slot = subgroup_slot(inv);
    let g = min(n, inv.sg_size);
    var st = shared_states[slot];
    for (var m = 1u; m < g; m = m * 2u) {
        let other = shuffle_state(st, m);
        var lo = st;
        var hi = other;
        if (partner_is_lower(inv, m)) {
            lo = other;
            hi = st;
        }
        st = merge(lo, hi);
    }
    if (slot % g == 0u) {
        shared_states[slot] = st;
    }
    return g;
}
