//! cstor-api (see ARCHITECTURE.md §3).
