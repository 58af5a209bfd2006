//! cstor-iscsi (see ARCHITECTURE.md §3).
