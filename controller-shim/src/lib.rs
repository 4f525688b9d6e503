//! Gateway API objects -> Portcullis desired config and statuses.
