// Destructive forms (data-confirm="question") ask first in a native <dialog>; on "yes" the
// form goes with confirmed=1. Without JavaScript the portal answers with a confirmation page
// (portal/pages.py, confirm_first), so nothing depends on this file.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) return;
  if (form.querySelector("input[name=confirmed]")) return;
  event.preventDefault();
  const submitter = event.submitter;  // its name and value go with the form, as without us
  const dialog = document.createElement("dialog");
  dialog.className = "confirm-dialog";
  const question = document.createElement("p");
  question.textContent = form.dataset.confirm;
  const yes = document.createElement("button");
  yes.type = "button";
  yes.className = "danger";
  yes.textContent = form.dataset.confirmButton || "Yes";
  const no = document.createElement("button");
  no.type = "button";
  no.textContent = "No, go back";
  dialog.append(question, yes, " ", no);
  document.body.append(dialog);
  no.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  yes.addEventListener("click", () => {
    const confirmed = document.createElement("input");
    confirmed.type = "hidden";
    confirmed.name = "confirmed";
    confirmed.value = "1";
    form.append(confirmed);
    dialog.close();
    form.requestSubmit(submitter && submitter.form === form ? submitter : undefined);
  });
  dialog.showModal();
  no.focus();
});
