// Subgroup reductions (devices with Features::SUBGROUP; appended to the rows
// and total kernels, with the `Invocation` that src/gpu/wgsl.rs writes). Each
// kernel's part (shaders/rows_subgroups.wgsl, total_subgroups.wgsl) gives
// `sg_shuffle`, `sg_merge`, `sg_load` and `sg_store` for its partials' type:
// the levels below are written once for both.
//
// WGSL fixes neither how subgroup lanes map to local_invocation_index nor the
// subgroup size, so the butterflies run over partials staged in workgroup
// memory and read back at subgroup_slot(): lanes of one subgroup then hold
// consecutive slots, and a butterfly over slots s .. s + g - 1 (g a power of
// two) pairs them as the binary tree in workgroup memory does, the lower
// slot's partial first. The bits equal the tree's at any power-of-two size.

// Whether the workgroup is made of full subgroups of a power-of-two size, so
// that subgroup_slot() numbers the invocations 0 .. WG - 1 (the same answer
// for every invocation of the workgroup). Where it fails, the tree runs alone.
fn full_subgroups(inv: Invocation) -> bool {
    let s = inv.sg_size;
    return s != 0u && (s & (s - 1u)) == 0u && inv.sg_count * s == WG && s <= WG;
}

// The workgroup-memory slot this invocation reduces.
fn subgroup_slot(inv: Invocation) -> u32 {
    return inv.sg_id * inv.sg_size + inv.sg_lane;
}

// Whether this lane's butterfly partner at distance m holds the lower slots.
fn partner_is_lower(inv: Invocation, m: u32) -> bool {
    return (inv.sg_lane & m) != 0u;
}

// The first levels of the tree over each segment of n partials (n a power of
// two) in workgroup memory, by butterflies within subgroups: each segment's
// (or each subgroup's, if smaller) total lands in its first slot. Returns the
// stride the tree continues from. Called by every invocation, after the
// barrier that follows the staging; needs a barrier before the slots are read.
fn subgroup_levels(inv: Invocation, n: u32) -> u32 {
    let slot = subgroup_slot(inv);
    let g = min(n, inv.sg_size);
    var x = sg_load(slot);
    for (var m = 1u; m < g; m = m * 2u) {
        let other = sg_shuffle(x, m);
        var lo = x;
        var hi = other;
        if (partner_is_lower(inv, m)) {
            lo = other;
            hi = x;
        }
        x = sg_merge(lo, hi);
    }
    if (slot % g == 0u) {
        sg_store(slot, x);
    }
    return g;
}
