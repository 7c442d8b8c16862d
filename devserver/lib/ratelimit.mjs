// Request rate limits and the FHIR interaction quota, modelled on the Medplum server's
// packages/server/src/ratelimit.ts and fhir/fhirquota.ts (rate-limiter-flexible on Redis):
// fixed 60-second windows that start with the first point consumed, points counted even when a
// consumption is refused, one `RateLimit` header line per policy ("requests", "fhirInteractions").
import { deepClone, OperationOutcomeError, tooManyRequests } from '@medplum/core';

const WINDOW_MS = 60 * 1000;

/** Points consumed per key in fixed windows (like RateLimiterRedis with duration 60). */
export class WindowCounter {
  /** @param {number | (() => number)} windowMs - the window length (a getter follows live settings) */
  constructor(windowMs = WINDOW_MS) {
    this.windowLength = typeof windowMs === 'function' ? windowMs : () => windowMs;
    this.windows = new Map(); // key -> { consumed, resetAt }
  }

  get windowMs() {
    return this.windowLength();
  }

  /**
   * Consumes points; the counter grows even when the limit is exceeded.
   * @returns {{ remainingPoints: number, msBeforeNext: number, consumedPoints: number, isFirstInDuration: boolean, rejected: boolean }}
   */
  consume(key, points, limit, now = Date.now()) {
    let w = this.windows.get(key);
    let isFirstInDuration = false;
    if (!w || w.resetAt <= now) {
      w = { consumed: 0, resetAt: now + this.windowMs };
      this.windows.set(key, w);
      isFirstInDuration = true;
    }
    w.consumed += points;
    return {
      remainingPoints: Math.max(0, limit - w.consumed),
      msBeforeNext: Math.max(0, w.resetAt - now),
      consumedPoints: w.consumed,
      isFirstInDuration,
      rejected: w.consumed > limit,
    };
  }

  clear() {
    this.windows.clear();
  }
}

export function rateLimitHeader(policy, result) {
  return `"${policy}";r=${result.remainingPoints};t=${Math.ceil(result.msBeforeNext / 1000)}`;
}

/** The OperationOutcome Medplum answers with on 429 (diagnostics = the limiter state). */
export function throttledOutcome(result, limit) {
  const outcome = deepClone(tooManyRequests);
  const { rejected: _rejected, ...state } = result;
  outcome.issue[0].diagnostics = JSON.stringify({ ...state, limit });
  return outcome;
}

/** Server-wide limiter state (per IP request counters, per membership / project FHIR quota). */
export class RateLimits {
  constructor(settings) {
    this.settings = settings; // live settings object (changed by /_devserver/config)
    this.requests = new WindowCounter();
    // Medplum's quota window is one minute; tests may shorten it (fhirQuotaWindowMs).
    const quotaWindow = () => this.settings.fhirQuotaWindowMs || WINDOW_MS;
    this.userQuota = new WindowCounter(quotaWindow);
    this.projectQuota = new WindowCounter(quotaWindow);
  }

  reset() {
    this.requests.clear();
    this.userQuota.clear();
    this.projectQuota.clear();
  }

  /** Per-IP request limit: auth routes (/auth/*, /oauth2/*) have their own, smaller, counter. */
  consumeRequest(ip, auth) {
    const limit = auth ? this.settings.authRateLimit : this.settings.rateLimit;
    if (!limit || limit <= 0) {
      return undefined;
    }
    const result = this.requests.consume((ip ?? 'unknown') + (auth ? ':auth' : ''), 1, limit);
    return { result, limit };
  }
}

/**
 * The FHIR quota of one request (Medplum's FhirRateLimiter): charged per membership and per
 * project; `r` reports whichever has less left. Blocks with 429 once either is spent.
 */
export class FhirQuota {
  /**
   * @param {RateLimits} limits
   * @param {{ membershipId: string, projectId: string, userLimit: number, projectLimit: number, enforce: boolean, report: boolean, onCharge?: (points: number) => void }} opts
   *   enforce: answer 429 when spent; report: send the "fhirInteractions" header
   */
  constructor(limits, opts) {
    this.limits = limits;
    this.opts = opts;
    this.current = undefined;
    this.delta = 0;
    this.suspended = 0;
  }

  consume(points) {
    if (this.suspended > 0 || points <= 0) {
      return;
    }
    const { membershipId, projectId, userLimit, projectLimit, enforce } = this.opts;
    if (enforce && this.current && this.current.remainingPoints <= 0) {
      throw new OperationOutcomeError(throttledOutcome(this.current, userLimit));
    }
    this.delta += points;
    this.opts.onCharge?.(points);
    const user = this.limits.userQuota.consume(membershipId, points, userLimit);
    if (user.rejected) {
      this.current = user;
      if (enforce) {
        throw new OperationOutcomeError(throttledOutcome(user, userLimit));
      }
      return;
    }
    const project = this.limits.projectQuota.consume(projectId, points, projectLimit);
    this.current = project.remainingPoints < user.remainingPoints ? project : user;
    if (project.rejected && enforce) {
      throw new OperationOutcomeError(throttledOutcome(project, userLimit));
    }
  }

  /** Runs fn without charging (used where the stand-in's internals would double-count). */
  async uncharged(fn) {
    this.suspended++;
    try {
      return await fn();
    } finally {
      this.suspended--;
    }
  }

  header() {
    return this.opts.report && this.current ? rateLimitHeader('fhirInteractions', this.current) : undefined;
  }
}
