// Subgroup reductions (devices with Features::SUBGROUP; appended to the rows
// and total kernels, with the `Invocation` that src/gpu/wgsl.rs writes).
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
