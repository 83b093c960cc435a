// The library's declared API (outbox/index.d.ts, what an app compiles against) checked against
// its implementation (outbox/src/index.js): tsc fails where the two part.
import type * as declared from '../outbox/index.js'
import * as implemented from '../outbox/src/index.js'

export const api: typeof declared = implemented
