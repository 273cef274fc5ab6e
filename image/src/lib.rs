//! OCI images on the host (work in progress).
