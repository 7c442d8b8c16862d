// Compiled (never run) by tests/contract/test_typescript_client.py: proves the generated types
// in starvit-api.d.ts type-check and carry the shapes a client relies on.
import type { components, paths } from "./starvit-api";

type Health = paths["/healthz"]["get"]["responses"]["200"]["content"]["application/json"];
type ErrorEnvelope = components["schemas"]["ErrorEnvelope"];

export const health: Health = { status: "ok" };

export const failure: ErrorEnvelope = {
  error_code: "not_found",
  message: "No such resource.",
  correlation_id: "4bf92f3577b34da6a3ce929d0e0e4736",
};

export function describeFailure(envelope: ErrorEnvelope): string {
  return `${envelope.error_code} (${envelope.correlation_id}): ${envelope.message}`;
}

// @ts-expect-error the envelope always carries a correlation id
export const incomplete: ErrorEnvelope = { error_code: "x", message: "y" };
