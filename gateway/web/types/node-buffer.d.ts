// tus-js-client's types name Node's Buffer (for its Node.js entry point). The outbox runs in
// browsers and service workers and never passes one: Node's types are not loaded, this stands in.
interface Buffer extends Uint8Array {}
