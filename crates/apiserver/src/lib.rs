//! cstor-apiserver (see ARCHITECTURE.md §3).
