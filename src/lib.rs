//! sluice: wiring of sources, dataflows and sinks into runnable pipelines.
