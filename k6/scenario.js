// A scenario, checked phase by phase: 20 virtual users against a server playing
// k6/scenario.yaml (steady, slow, outage, recover; 2 s each), with thresholds that hold per
// phase. Each request is tagged with the phase the server is in when it is sent, worked out
// from the time since the scenario's start; requests within 250 ms of a boundary are tagged
// `boundary` and held to no threshold.
//   microservice2 --control --scenario k6/scenario.yaml &
//   k6 run -d 8s k6/scenario.js
// setup() restarts the scenario (POST /admin/scenario/restart, with --control) so that it and
// the load start together; without --control it reads where the scenario is instead
// (GET /admin/scenario). ADMIN_URL points at --admin-port, CONTROL_TOKEN at --control-token.
// scenario.yaml is written in YAML's JSON form, so that this script can read it too.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:3000';
const ADMIN_URL = __ENV.ADMIN_URL || BASE_URL;
const PATH = __ENV.PATH_ || '/v1/avatar';
const SCENARIO = JSON.parse(open('./scenario.yaml'));
const GUARD_MS = 250;

function millis(duration) {
  const match = /^([0-9.]+)(ms|s|m)$/.exec(duration);
  if (!match) {
    throw new Error(`scenario.yaml: a duration this script cannot read: ${duration}`);
  }
  return parseFloat(match[1]) * { ms: 1, s: 1000, m: 60000 }[match[2]];
}

const PHASES = [];
let end = 0;
for (const phase of SCENARIO.phases) {
  PHASES.push({ name: phase.name, start: end, end: end + millis(phase.duration) });
  end += millis(phase.duration);
}
const LENGTH = end;

// What each phase of scenario.yaml must look like from the caller's side.
export const options = {
  vus: 20,
  duration: `${LENGTH / 1000}s`,
  thresholds: {
    'http_req_failed{phase:steady}': ['rate<0.01'],
    'http_req_duration{phase:steady}': ['p(95)<40'],
    // delay=50ms: every answer waits at least that long.
    'http_req_duration{phase:slow}': ['p(50)>=45', 'p(95)<150'],
    'http_req_failed{phase:slow}': ['rate<0.01'],
    // status=503:50: about half fail.
    'http_req_failed{phase:outage}': ['rate>0.3', 'rate<0.7'],
    'http_req_failed{phase:recover}': ['rate<0.01'],
    'http_req_duration{phase:recover}': ['p(95)<40'],
  },
};

function headers() {
  return __ENV.CONTROL_TOKEN ? { authorization: `Bearer ${__ENV.CONTROL_TOKEN}` } : {};
}

// When the scenario started, on this machine's clock.
export function setup() {
  let res = http.post(`${ADMIN_URL}/admin/scenario/restart`, null, { headers: headers() });
  if (res.status !== 200) {
    res = http.get(`${ADMIN_URL}/admin/scenario`, { headers: headers() });
  }
  const now = res.json();
  if (now.state !== 'running') {
    throw new Error(`the scenario is not running: ${res.body}`);
  }
  const phaseStart = PHASES[now.index].start;
  return { t0: Date.now() - phaseStart - now.elapsed_ms };
}

function phaseAt(elapsed) {
  const into = SCENARIO.loop ? elapsed % LENGTH : elapsed;
  for (const phase of PHASES) {
    if (into >= phase.start && into < phase.end) {
      const nearBoundary = into - phase.start < GUARD_MS || phase.end - into < GUARD_MS;
      return nearBoundary ? 'boundary' : phase.name;
    }
  }
  return 'after';
}

export default function (data) {
  const phase = phaseAt(Date.now() - data.t0);
  const res = http.get(`${BASE_URL}${PATH}`, { tags: { phase } });
  check(res, {
    'a 200 carries the avatar list': (r) => r.status !== 200 || r.body.length === 3696,
    'anything else is an injected 503': (r) => r.status === 200 || r.status === 503,
  });
}
