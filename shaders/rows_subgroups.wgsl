// The rows kernel's partials for the subgroup levels of shaders/subgroups.wgsl.

fn sg_shuffle(s: State, m: u32) -> State {
    return State(subgroupShuffleXor(s.key, m), subgroupShuffleXor(s.ma, m), subgroupShuffleXor(s.sa, m),
                 subgroupShuffleXor(s.u, m), subgroupShuffleXor(s.mb, m), subgroupShuffleXor(s.sb, m),
                 subgroupShuffleXor(s.v, m), subgroupShuffleXor(s.t, m), subgroupShuffleXor(s.flags, m));
}

fn sg_merge(lo: State, hi: State) -> State { return merge(lo, hi); }
fn sg_load(slot: u32) -> State { return shared_states[slot]; }
fn sg_store(slot: u32, s: State) { shared_states[slot] = s; }
