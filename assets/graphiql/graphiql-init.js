// Starts GraphiQL on the page src/graphiql.rs serves. It is a file of its own, not an inline script,
// so the page runs under `script-src 'self'`. React, ReactDOM and GraphiQL are the globals their UMD
// builds define; the page loads them (deferred, in order) before this file.
'use strict';

(function () {
  // GraphiQL's dialogs add a <style> element (react-remove-scroll), which the page's policy allows
  // only with this response's nonce; that library takes it from the global __webpack_nonce__.
  window.__webpack_nonce__ = document.currentScript.nonce;
  const root = document.getElementById('graphiql');
  if (typeof GraphiQL === 'undefined' || typeof React === 'undefined' || typeof ReactDOM === 'undefined') {
    root.textContent = 'GraphiQL did not load: see the browser console.';
    return;
  }
  // The endpoint this page was served from (/graphql), so the page works behind a path prefix too.
  const fetcher = GraphiQL.createFetcher({ url: window.location.pathname });
  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher,
      // The headers tab opens with the bearer header to fill in. Headers are not saved in the
      // browser's storage (GraphiQL's shouldPersistHeaders stays false): a token dies with the tab.
      isHeadersEditorEnabled: true,
      defaultEditorToolsVisibility: 'headers',
      defaultHeaders: '{\n  "Authorization": "Bearer <accessToken>"\n}',
    }),
  );
})();
