//! Record formats: DynamoDB JSON (stream records and items) and cds-update decoders and encoders.
