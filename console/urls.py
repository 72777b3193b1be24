from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from telemetry import views as telemetry_views

from . import views

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
    path("metrics", telemetry_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]
