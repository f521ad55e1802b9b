//! Generic declarative operators: filter, map, key_by, latest, join, count, aggregate, union.
