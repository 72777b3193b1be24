// Keyboard shortcuts for the review queue: j/k move, a/r/f/n act on the focused item, x selects it.
(function () {
  "use strict";
  function items() { return Array.from(document.querySelectorAll("[data-review-id]:not(.done)")); }
  function current() { return document.activeElement && document.activeElement.closest("[data-review-id]"); }
  document.addEventListener("keydown", function (event) {
    if (event.target.matches("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
    const list = items();
    if (!list.length) return;
    const here = current();
    const index = here ? list.indexOf(here) : -1;
    if (event.key === "j" || event.key === "k") {
      const next = list[Math.max(0, Math.min(list.length - 1, index + (event.key === "j" ? 1 : -1)))];
      next.focus();
      event.preventDefault();
      return;
    }
    if (!here) return;
    if (event.key === "x") {
      const box = here.querySelector("input[type=checkbox]");
      box.checked = !box.checked;
      event.preventDefault();
      return;
    }
    const button = here.querySelector('button[data-key="' + event.key + '"]');
    if (button) {
      event.preventDefault();
      const after = list[index + 1];
      button.click();
      if (after) after.focus();
    }
  });
})();
