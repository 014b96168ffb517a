//! The store conformance suite against the memory store, in both of its
//! flavours: retaining finished tasks (readable with `task_get`) and
//! forgetting them (the library's default).

mod retaining {
    use herd_core::store::MemoryStore;

    herd_core::store_conformance!(|_case: &'static str| async {
        MemoryStore::<String, String>::retaining()
    });
}

mod forgetting {
    use herd_core::store::MemoryStore;

    herd_core::store_conformance!(|_case: &'static str| async {
        MemoryStore::<String, String>::new()
    });
}
