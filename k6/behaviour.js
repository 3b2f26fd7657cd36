// Latency and error injection, end to end: 50 virtual users for 15 s against /v1/avatar with a
// lognormal delay (median 5 ms, p99 50 ms) and 1% injected 503s, with thresholds a healthy
// caller-under-test setup should meet. Point BASE_URL at a gateway to inject one hop down.
//   k6 run k6/behaviour.js                                  (against http://localhost:3000)
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e PATH_=/v1/user k6/behaviour.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:3000';
const PATH = __ENV.PATH_ || '/v1/avatar';
const BEHAVIOUR = __ENV.BEHAVIOUR || 'delay=lognormal(5ms,50ms)&status=503:1';

export const options = {
  vus: 50,
  duration: '15s',
  thresholds: {
    // About 1% of requests are injected 503s: fail the run only well above that.
    http_req_failed: ['rate<0.05'],
    // The injected p99 is 50 ms; p95 sits near 30 ms.
    http_req_duration: ['p(95)<100'],
    checks: ['rate>0.95'],
  },
};

export default function () {
  const res = http.get(`${BASE_URL}${PATH}`, { headers: { 'x-m2-behaviour': BEHAVIOUR } });
  check(res, {
    'status is 200 or an injected 503': (r) => r.status === 200 || r.status === 503,
    'a 200 carries the avatar list': (r) => r.status !== 200 || r.body.length === 3696,
  });
}
