from django.urls import path

from portal.booking import views

app_name = "booking"
urlpatterns = [
    path("timeline/", views.site_timeline, name="site_timeline"),
    path("find/", views.finder, name="finder"),
    path("find/book/", views.book_need, name="book_need"),
    path("hosts/<slug:name>/timeline/", views.host_timeline, name="host_timeline"),
    path("hosts/<slug:name>/book/", views.book, name="book"),
    path("reservations/", views.my_reservations, name="my_reservations"),
    path("reservations/<int:pk>/", views.reservation_detail, name="reservation_detail"),
    path(
        "reservations/<int:pk>/<str:change>/",
        views.reservation_change,
        name="reservation_change",
    ),
]
