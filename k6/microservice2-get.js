// The seed's k6 load: 100 virtual users calling GET /v1/avatar for 15 s.
//   k6 run k6/microservice2-get.js                       (against http://localhost:3000)
//   k6 run -e BASE_URL=http://127.0.0.1:3001 k6/microservice2-get.js
// `-u` and `-d` on the command line override the options below, as in the seed.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:3000';

export const options = {
  vus: 100,
  duration: '15s',
};

export default function () {
  const res = http.get(`${BASE_URL}/v1/avatar`);
  check(res, {
    'status is 200': (r) => r.status === 200,
    'body is the avatar list': (r) => r.body && r.body.length === 3696,
  });
}
