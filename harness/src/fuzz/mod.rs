//! Fuzz target bodies (queue_chain, mmio_regs, diff_mmio) with their oracles; see fuzz/.
