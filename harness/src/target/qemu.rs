//! QEMU over qtest as a target; see the module docs below.
