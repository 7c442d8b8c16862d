// How many patients carry each condition?
MATCH (p:Patient)-[:HAS_CONDITION]->(c:Condition)
RETURN c.code AS condition, count(DISTINCT p) AS patients
ORDER BY patients DESC, condition
