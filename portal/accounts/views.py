from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from portal.accounts import services
from portal.accounts.forms import ProfileForm, SSHKeyAddForm


@login_required
def profile(request):
    form = ProfileForm(request.POST or None, instance=request.user)
    if request.method == "POST":
        if form.is_valid():
            form.save()
            messages.success(request, "Profile saved.")
            return redirect("accounts:profile")
        return render(request, "accounts/profile.html", {"form": form}, status=400)
    token = Token.objects.filter(user=request.user).first()
    return render(request, "accounts/profile.html", {"form": form, "token": token})


@login_required
@require_POST
def api_token_rotate(request):
    Token.objects.filter(user=request.user).delete()
    token = Token.objects.create(user=request.user)
    messages.success(request, f"New API token: {token.key}. The old one no longer works.")
    return redirect("accounts:profile")


@login_required
def ssh_keys(request):
    form = SSHKeyAddForm(request.POST or None)
    status, errors = 200, []
    if request.method == "POST":
        if form.is_valid():
            result = services.ssh_keys_add_text(user=request.user, text=form.cleaned_data["keys"])
            for key in result.added:
                messages.success(request, f"Added {key.key_type} key {key.fingerprint}.")
            if not result.errors:
                return redirect("accounts:ssh_keys")
            errors = result.errors
        else:
            errors = form.errors["keys"]
        # An empty form: what was pasted may be a private key, and is never echoed back.
        form, status = SSHKeyAddForm(), 400
    keys = request.user.ssh_keys.all()
    context = {"form": form, "keys": keys, "key_errors": errors}
    return render(request, "accounts/ssh_keys.html", context, status=status)


@login_required
@require_POST
def ssh_key_delete(request, key_id):
    if services.ssh_key_remove(user=request.user, key_id=key_id):
        messages.success(request, "Key removed.")
    else:
        messages.error(request, "No such key on your account.")
    return redirect("accounts:ssh_keys")
