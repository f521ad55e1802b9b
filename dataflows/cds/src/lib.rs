//! The cds dataflow: the contact-discovery change filter, accounts by uuid and the e164 directory.
