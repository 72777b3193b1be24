from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from . import control_views as control
from . import experiment_views as experiments
from . import metrics_views, token_views, views
from . import webhook_views as webhooks
from .api import api
from .api.core import not_found as api_not_found

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("briefs/new/", views.brief_new, name="brief-new"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/<int:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/card/", views.job_card, name="job-card"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/<str:stage>.png", views.job_image, name="job-image"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/samples.json", views.dashboard_samples, name="dashboard-samples"),
    path("review/", views.review_queue, name="review"),
    path("review/bulk/", views.review_bulk, name="review-bulk"),
    path("review/<int:verification_id>/<str:action>/", views.review_action, name="review-action"),
    path("policy/", views.policy, name="policy"),
    path("policy.yaml", views.policy_yaml, name="policy-yaml"),
    path("lanes/", control.lane_list, name="lane-list"),
    path("teams/", control.team_list, name="team-list"),
    path("teams/<int:pk>/quota/", control.team_quota, name="team-quota"),
    path("lanes/<slug:name>/", control.lane_detail, name="lane-detail"),
    path("lanes/<slug:name>/mode/", control.lane_mode, name="lane-mode"),
    path("lanes/<slug:name>/limits/", control.lane_limits, name="lane-limits"),
    path("lanes/<slug:name>/notice/dismiss/", control.lane_dismiss_notice, name="lane-dismiss-notice"),
    path("lanes/<slug:name>/activate/", control.lane_activate, name="lane-activate"),
    path("lanes/<slug:name>/canary/", control.lane_canary, name="lane-canary"),
    path("lanes/<slug:name>/canary/end/", control.lane_end_canary, name="lane-end-canary"),
    path("lanes/<slug:name>/promote/", control.lane_promote, name="lane-promote"),
    path("lanes/<slug:name>/rollback/", control.lane_rollback, name="lane-rollback"),
    path("lanes/<slug:name>/adapters/", control.lane_adapter_link, name="lane-adapter-link"),
    path(
        "lanes/<slug:name>/adapters/<int:adapter_id>/remove/", control.lane_adapter_unlink, name="lane-adapter-unlink"
    ),
    path("lanes/<slug:name>/workers/<int:worker_id>/", control.worker_consume, name="worker-consume"),
    path("workers/reload/", control.workers_reload, name="workers-reload"),
    path("versions/", control.version_list, name="version-list"),
    path("versions/new/", control.version_new, name="version-new"),
    path("versions/<slug:name>/", control.version_detail, name="version-detail"),
    path("versions/<slug:name>/smoke.png", control.version_smoke, name="version-smoke"),
    path("versions/<slug:name>/validate/", control.version_validate, name="version-validate"),
    path("versions/<slug:name>/adapters/", control.version_adapter_new, name="version-adapter-new"),
    path("versions/<slug:name>/retire/", control.version_retire, name="version-retire"),
    path("audit/", control.audit_log, name="audit"),
    path("experiments/", experiments.experiment_list, name="experiment-list"),
    path("experiments/new/", experiments.experiment_new, name="experiment-new"),
    path("experiments/<slug:name>/", experiments.experiment_detail, name="experiment-detail"),
    path("experiments/<slug:name>/export.<str:fmt>", experiments.experiment_export, name="experiment-export"),
    path("experiments/<slug:name>/canary/", experiments.experiment_canary, name="experiment-canary"),
    path(
        "experiments/<slug:name>/<str:action>/",
        experiments.experiment_control,
        name="experiment-control",
    ),
    path("account/tokens/", token_views.token_list, name="token-list"),
    path("account/tokens/<int:token_id>/revoke/", token_views.token_revoke, name="token-revoke"),
    path("webhooks/", webhooks.webhook_list, name="webhook-list"),
    path("webhooks/new/", webhooks.webhook_new, name="webhook-new"),
    path("webhooks/<int:endpoint_id>/", webhooks.webhook_detail, name="webhook-detail"),
    path("webhooks/<int:endpoint_id>/rotate/", webhooks.webhook_rotate, name="webhook-rotate"),
    path("webhooks/<int:endpoint_id>/enabled/", webhooks.webhook_enabled, name="webhook-enabled"),
    path("webhooks/<int:endpoint_id>/delete/", webhooks.webhook_delete, name="webhook-delete"),
    path("webhooks/deliveries/<int:delivery_id>/redeliver/", webhooks.webhook_redeliver, name="webhook-redeliver"),
    path("metrics", metrics_views.metrics, name="metrics"),
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<path>.*)$", api_not_found),
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico whatever the page links to (the Django admin, API docs, images).
    path("favicon.ico", views.favicon),
]
