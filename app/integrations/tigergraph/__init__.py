"""TigerGraph through pyTigerGraph: the research graph at scale (same openCypher queries)."""
