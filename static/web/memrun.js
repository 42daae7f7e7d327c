// Confirmation for forms that destroy or roll something (data-confirm); upload forms
// (data-upload) sent with the CSRF token in a header, which the server checks before
// reading the body; and the deploy form's drop zone, which fills the file input.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-drop]").forEach((zone) => {
    const input = zone.querySelector("input[type=file]");
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer.files.length) input.files = event.dataTransfer.files;
    });
  });
});
document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.matches("form[data-upload]") || event.defaultPrevented) return;
  event.preventDefault();
  const token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  form.querySelectorAll("button[type=submit]").forEach((button) => { button.disabled = true; });
  const response = await fetch(form.action || window.location.href, {
    method: "POST",
    body: new FormData(form),
    headers: { "X-CSRFToken": token },
    credentials: "same-origin",
  });
  if (response.redirected) {
    window.location.assign(response.url);
    return;
  }
  // A refusal: the server's page, with the reason and the form as it was sent.
  const page = await response.text();
  document.open();
  document.write(page);
  document.close();
});
