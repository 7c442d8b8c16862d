// Which conditions co-occur among patients with an eGFR below $threshold (mL/min/1.73 m2)?
// eGFR LOINC codes: 33914-3 (MDRD, Synthea), 62238-1 (CKD-EPI, the service's eGFR bot),
// 98979-8 (CKD-EPI 2021 without race).
MATCH (p:Patient)-[m:MEASURED]->(f:Feature)
WHERE f.code IN ['33914-3', '62238-1', '98979-8'] AND m.value < $threshold
WITH DISTINCT p
MATCH (p)-[:HAS_CONDITION]->(a:Condition), (p)-[:HAS_CONDITION]->(b:Condition)
WHERE a.code < b.code
RETURN a.code AS condition_a, b.code AS condition_b, count(DISTINCT p) AS patients
ORDER BY patients DESC, condition_a, condition_b
