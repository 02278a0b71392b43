// GraphiQL against this gateway: queries over HTTP (`POST /graphql`), subscriptions over
// WebSocket (`/graphql/ws`, graphql-transport-ws via graphql-ws). The key is asked once per
// tab and sent as `Authorization: Bearer` and in `connection_init`.

import { createElement } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { createClient } from 'graphql-ws';
import {
  AuthError,
  REFUSED,
  api,
  askForKey,
  connectionParams,
  getKey,
  info,
  isAuthClose,
  setKey,
  takeKeyFromHash,
  wsUrl,
} from './common.js';

const $ = (id) => document.getElementById(id);

const QUERY = `# Weir's GraphQL gateway. Run an operation with the ▶ button (or Ctrl-Enter).
# Queries go over HTTP; subscriptions stream over the WebSocket until you stop them.

query Overview {
  ingestJobs { jobId state recordsCommitted recordsDeadLettered }
  counts(labels: ["Person", "Company"]) { label count }
}
`;

const SUBSCRIPTION = `# Every graph change as it is committed (filter with labels / types).
subscription Changes {
  graphChanges(labels: ["Person"]) {
    seq operation kind label key jobId missed
  }
}
`;

let root = null;
let wsClient = null;
let serverInfo = { auth_required: true };

function showFatal(message) {
  $('fatal').textContent = message;
  $('fatal').hidden = !message;
}

async function refused(message = REFUSED) {
  if (root) root.unmount();
  root = null;
  if (wsClient) wsClient.dispose();
  wsClient = null;
  $('graphiql').hidden = true;
  $('change-key').hidden = true;
  setKey('');
  await askForKey($('key-panel'), message);
  start();
}

async function start() {
  showFatal('');
  // One cheap authenticated call first: a wrong key gets a clear message, not a broken editor.
  try {
    await api('/graphql', {
      method: 'POST',
      body: JSON.stringify({ query: '{ __typename }' }),
      headers: { 'content-type': 'application/json' },
    });
  } catch (e) {
    if (e instanceof AuthError) return refused();
    showFatal(`The gateway did not answer: ${e.message}`);
  }
  const key = getKey();
  $('change-key').hidden = !serverInfo.auth_required;
  wsClient = createClient({
    url: wsUrl(),
    connectionParams,
    lazy: true,
    shouldRetry: (ev) => !isAuthClose(ev),
    on: {
      closed: (ev) => {
        if (isAuthClose(ev)) refused();
      },
    },
  });
  const fetcher = createGraphiQLFetcher({
    url: `${location.origin}/graphql`,
    headers: key ? { Authorization: `Bearer ${key}` } : {},
    wsClient,
  });
  $('graphiql').hidden = false;
  root = createRoot($('graphiql'));
  root.render(
    createElement(GraphiQL, {
      fetcher,
      defaultTabs: [{ query: QUERY }, { query: SUBSCRIPTION }],
      defaultEditorToolsVisibility: false,
      isHeadersEditorEnabled: false,
      shouldPersistHeaders: false,
    }),
  );
}

async function boot() {
  takeKeyFromHash();
  try {
    serverInfo = await info();
  } catch (e) {
    showFatal(`GraphiQL cannot reach the server: ${e.message}. Is it running?`);
    return;
  }
  $('service').textContent = `${serverInfo.service} ${serverInfo.version}`;
  $('change-key').onclick = () => refused('');
  if (serverInfo.auth_required && !getKey()) {
    await askForKey($('key-panel'), '');
  }
  start();
}

boot().catch((e) => showFatal(`GraphiQL failed to start: ${e.message}`));
