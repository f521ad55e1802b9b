//! The contacts dataflow: client state, contact resolution and contact-id writer outputs.
